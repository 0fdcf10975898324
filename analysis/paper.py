"""The GAT paper's published scaling-study points, their training compute, and a fit of them.

Points (docs/METHOD.md §7; Hyun et al. 2025, scaling study): FID-50K of GAT-S/2, B/2, L/2, XL/2
after 50K iterations at batch 512: 15.2, 9.5, 4.6, 4.0. The paper reports the compute law
``FID ~ 3.52e5 * C^-0.456`` with C in training GFLOPs (ICML version) without stating how it
counts C, so the compute here is an **estimate from the published forward costs, not a
measurement**:

* forward cost of G's transformer blocks per image, ``M_G`` = 6.1 / 23 / 80 / 118 GMACs for
  S/B/L/XL at /2 (docs/METHOD.md §6, DiT convention);
* D's blocks have G's depth and width and 256 + 1 (CLS) tokens, so ``M_D = M_G`` (< 1% off);
  embeddings, heads, the mapping network and D's class projection are left out (< 1%), and so are
  the frozen VAE encoder and the optional REPA/DINOv2 features;
* passes per image and iteration, as the reference implementation trains (one D step then one
  G step, R1 and R2 by finite differences at every step; a backward pass costs 2 forwards when
  it computes weight gradients, 1 when it only propagates to the input):

  ====================================================  =========  =========
  pass                                                   G (x M_G)  D (x M_D)
  ====================================================  =========  =========
  D step: G forward without grad                         1
  D step: D forward on real, fake, real+eps, fake+eps               4
  D step: D backward of those four                                  8
  G step: G forward and backward                         3
  G step: D forward on fake, backward to the input only             2
  G step: D forward on real without grad                            1
  total                                                  4          15
  ====================================================  =========  =========

  training FLOPs per image = 2 FLOPs/MAC x (4 M_G + 15 M_D) = 38 M_G;
  C = that x 512 images x 50,000 iterations.

A constant factor in the convention changes only A, never the fitted exponent alpha.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.fit import ScalingFit, fit_scaling
from core.config import SIZES

ITERATIONS = 50_000
BATCH = 512
FLOPS_PER_MAC = 2
G_PASSES = 4
"""Forward-equivalents of G per image and iteration (table in the module docstring)."""
D_PASSES = 15
"""Forward-equivalents of D per image and iteration (table in the module docstring)."""
CONVENTION = ("estimated training FLOPs = 2 FLOPs/MAC x (4 x G-blocks forward MACs + 15 x D-blocks "
              "forward MACs) per image x 512 images x 50K iterations; D forward = G forward; "
              "R1/R2 by finite differences every step; VAE/DINOv2 excluded")

# size -> (G-blocks forward GMACs per image at /2, FID-50K at 50K iterations); widths and depths
# are core.config.SIZES
PAPER_POINTS: dict[str, tuple[float, float]] = {
    "S": (6.1, 15.2),
    "B": (23.0, 9.5),
    "L": (80.0, 4.6),
    "XL": (118.0, 4.0),
}
PAPER_LAW = {"A": 3.52e5, "alpha": 0.456, "c_unit": "GFLOPs"}
"""The paper's reported compute law FID = A * C^-alpha (ICML version)."""


def train_flops_per_image(g_forward_macs: float, d_forward_macs: float) -> float:
    """Estimated training FLOPs per image and iteration (pass table in the module docstring)."""
    return FLOPS_PER_MAC * (G_PASSES * g_forward_macs + D_PASSES * d_forward_macs)


def paper_points() -> pd.DataFrame:
    """The published points: size, width, depth, g_forward_gmacs, fid50k, train_flops, train_gflops."""
    rows = []
    for size, (gmacs, fid) in PAPER_POINTS.items():
        macs = gmacs * 1e9
        flops = train_flops_per_image(macs, macs) * BATCH * ITERATIONS
        rows.append({"size": size, "width": SIZES[size].width, "depth": SIZES[size].depth, "g_forward_gmacs": gmacs,
                     "fid50k": fid, "train_flops": flops, "train_gflops": flops / 1e9})
    return pd.DataFrame(rows)


def fit_paper(model: str = "power", n_boot: int = 1000, seed: int = 0) -> ScalingFit:
    """Fit the published points with C in GFLOPs (as the paper states its law)."""
    pts = paper_points()
    return fit_scaling(pts["train_gflops"], pts["fid50k"], model, c_unit="GFLOPs",
                       n_boot=n_boot, seed=seed)


def implied_flops_per_mac() -> float:
    """Training FLOPs per G-forward MAC per image that would make the paper's law fit its own points.

    With the paper's alpha and A fixed, the best log-space match of ``A (k M_G N / 1e9)^-alpha``
    to the four FIDs (N = 512 x 50K images) gives ``log k`` as the mean of the per-point values.
    Our pass table gives k = 38; the paper's A implies about 22.
    """
    pts = paper_points()
    images = BATCH * ITERATIONS
    log_k = ((np.log(PAPER_LAW["A"]) - np.log(pts["fid50k"])) / PAPER_LAW["alpha"]
             - np.log(pts["g_forward_gmacs"] * images))
    return float(np.exp(log_k.mean()))
