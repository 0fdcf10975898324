"""Data-parallel training: ``core.gan.train.train`` under DistributedDataParallel on CPU (gloo backend,
2 processes). Each rank samples its own data (the iteration seed includes the rank), so the
networks stay identical across ranks only if gradients are averaged over ranks."""

import datetime
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from core.gan import train as train_mod
from core.gan.checkpoint import load_checkpoint
from core.config import NetConfig, TrainConfig

WORLD = 2
NET = NetConfig(width=32, depth=4, heads=2)
CFG = TrainConfig(name="ddp", dataset="random", g=NET, d=NET, d_proj_dim=32, batch=8, iterations=3,
                  eval_every=-1, log_every=1, diag_every=2, seed=5)


def worker(rank: int, tmp: str) -> None:
    """One rank: train, then save its status and final G / D parameters to ``tmp/rank<r>.pt``.

    Parameters only: the buffer ``G.w_avg`` (per-class running mean of w, for truncation) is
    updated from each rank's own batch and DDP broadcasts rank 0's copy at every forward, so after
    the last G step it is rank-local, as in the reference implementation (there DDP does not
    broadcast buffers at all); rank 0's copy is the one checkpointed.
    """
    torch.set_num_threads(1)
    # A file store, not a TCP port: no port to race for with other processes.
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    built = []  # the (G, D) that train() builds and trains (DDP wraps these very modules)
    G_init = {}

    def recording_build(cfg, device=None):
        built.append(build(cfg, device))
        G_init.update({k: p.detach().clone() for k, p in built[-1][0].named_parameters()})
        return built[-1]

    build, train_mod.build_models = train_mod.build_models, recording_build
    try:
        # Each rank gets its own run directory, so that anything rank 1 wrote would show.
        result = train_mod.train(CFG, os.path.join(tmp, f"run{rank}"), progress=False)
        (G, D), = built
        params = {net: {k: p.detach() for k, p in model.named_parameters()} for net, model in (("G", G), ("D", D))}
        torch.save({"status": result.status, "iterations": result.iterations, **params, "G_init": G_init},
                   os.path.join(tmp, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_two_rank_ddp_training_keeps_ranks_identical(tmp_path):
    mp.spawn(worker, args=(str(tmp_path),), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert [(r["status"], r["iterations"]) for r in ranks] == [("finished", 3)] * WORLD

    # identical parameters on both ranks, and equal to what rank 0 checkpointed
    checkpoint = load_checkpoint(tmp_path / "run0" / "checkpoints" / "latest.pt")
    for net in ("G", "D"):
        assert ranks[0][net].keys() == ranks[1][net].keys()
        for name, value in ranks[0][net].items():
            assert torch.equal(value, ranks[1][net][name]), f"{net}.{name} differs between ranks"
            assert torch.equal(value, checkpoint[net][name]), f"{net}.{name} differs from rank 0's checkpoint"
    assert checkpoint["iteration"] == 3

    # training moved G away from its initial values
    moved = [not torch.equal(ranks[0]["G"][k], ranks[0]["G_init"][k]) for k in ranks[0]["G"] if "qkv.weight" in k]
    assert len(moved) == NET.depth and all(moved)

    # only rank 0 wrote: its run directory is complete, rank 1's was never created
    run0 = tmp_path / "run0"
    assert not (tmp_path / "run1").exists()
    assert json.loads((run0 / "config.json").read_text()) == CFG.to_dict()
    stats = [json.loads(line) for line in (run0 / "stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in stats] == [1, 2, 3]
    assert [s["progress/kimg"] for s in stats] == [0.008, 0.016, 0.024]  # global batch 8, not 4 per rank
    assert "diag/g_update_rel" in stats[1]
    assert json.loads((run0 / "result.json").read_text())["status"] == "finished"
