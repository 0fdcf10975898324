"""Sweep files (scaling/spec.py): parsing, scientific notation, every bad key listed with its path,
cross-field rules, the JSON schema, and every shipped sweep file."""

import json
import textwrap
from pathlib import Path

import pytest

from core.config import ConfigError
from scaling.spec import (
    SweepFileError,
    SweepSpec,
    dataset_path,
    default_output_dir,
    is_local_store,
    load_spec,
)
from scaling.yamlio import parse_scalar

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"

VALID = """
name: t
dataset: random
model: {widths: [32, 64], depths: [4], head_dim: 16}
lr: {base_lrs: [1e-4, 2.5e-4], rules: [gat, constant], base_width: 32}
budget: {iterations: 10}
train: {d_proj_dim: 32, batch: 8}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def problems(tmp_path: Path, text: str) -> str:
    with pytest.raises(SweepFileError) as info:
        load_spec(write(tmp_path, text))
    return str(info.value)


def test_valid_file_loads_with_numbers_in_scientific_notation(tmp_path):
    spec = load_spec(write(tmp_path, VALID))
    assert spec.lr.base_lrs == [1e-4, 2.5e-4]
    assert all(isinstance(x, float) for x in spec.lr.base_lrs)
    assert spec.model.widths == [32, 64] and spec.lr.rules == ["gat", "constant"]
    assert spec.resources.cpus == 1.0 and spec.max_failures == 2


def test_scalar_parsing_matches_yaml_1_2():
    assert parse_scalar("1e-4") == 1e-4
    assert parse_scalar("1E18") == 1e18
    assert parse_scalar("-2.5e+3") == -2500.0
    assert parse_scalar("64") == 64 and isinstance(parse_scalar("64"), int)
    assert parse_scalar("bf16") == "bf16"
    assert parse_scalar("true") is True


def test_integer_fields_accept_integral_scientific_notation(tmp_path):
    spec = load_spec(write(tmp_path, VALID.replace("iterations: 10", "iterations: 5e4")))
    assert spec.budget.iterations == 50_000


def test_single_values_stand_for_lists(tmp_path):
    spec = load_spec(write(tmp_path, VALID.replace("widths: [32, 64]", "widths: 64").replace(
        "base_lrs: [1e-4, 2.5e-4]", "base_lrs: 3e-4")))
    assert spec.model.widths == [64] and spec.lr.base_lrs == [3e-4]


def test_every_bad_key_is_listed_with_its_path_and_a_suggestion(tmp_path):
    text = VALID.replace("widths:", "widthz:").replace("base_width:", "base_widht:") + "seed: [1]\n"
    msg = problems(tmp_path, text)
    assert "4 problems" in msg
    assert "model.widthz: unknown key (did you mean 'widths'?)" in msg
    assert "lr.base_widht: unknown key (did you mean 'base_width'?)" in msg
    assert "lr.base_width: required with the gat rule" in msg  # the misspelt key leaves it unset
    assert "seed: unknown key (did you mean 'seeds'?)" in msg


def test_train_overrides_are_strict_and_exclude_grid_fields(tmp_path):
    msg = problems(tmp_path, VALID.replace("batch: 8", "bacth: 8, lr_g: 0.1, iterations: 3"))
    assert "train.bacth: unknown key (did you mean 'batch'?)" in msg
    assert "train.lr_g: set by the sweep itself: use lr.base_lrs / lr.rules instead" in msg
    assert "train.iterations: set by the sweep itself: use budget instead" in msg


def test_wrong_types_and_values_name_the_field(tmp_path):
    msg = problems(tmp_path, VALID.replace("rules: [gat, constant]", "rules: [gat, sqrt]").replace(
        "{iterations: 10}", "{iterations: -5}"))
    assert "lr.rules.1: unknown LR rule 'sqrt'; choose constant, gat, mup, or power<a>" in msg
    assert "budget.iterations: Input should be greater than 0 (got -5)" in msg


@pytest.mark.parametrize("old, new, expected", [
    ("head_dim: 16", "heads: 3", "width 32 is not divisible by heads=3"),
    ("head_dim: 16", "head_dim: 6", "width 32 is not divisible by head_dim=6"),
    ("[32, 64], depths: [4], head_dim: 16", "[36], depths: [4], head_dim: 6",
     "width 36 with head_dim=6 gives head dim 6, not divisible by 4"),
    ("head_dim: 16", "heads: 16", "width 32 with heads=16 gives head dim 2"),
    ("head_dim: 16", "heads: 2, head_dim: 16", "exactly one of heads"),
    ("depths: [4]", "depths: [4, 6]", "generator depths [6] are not multiples of 4"),
    ("depths: [4], ", "", "widths and depths go together"),
    ("{iterations: 10}", "{iterations: 10, kimg: 3}", "exactly one of iterations or kimg"),
    ("{iterations: 10}", "{}", "exactly one of iterations or kimg"),
    ("batch: 8", "batch: 8, latent_size: 6", "model.patch [4] does not divide latent_size=6"),
    ("batch: 8", "batch: 0", "train: batch must be positive, got 0"),
    ("dataset: random", "dataset: random\npreset: huge", "preset 'huge' is unknown"),
    ("dataset: random", "dataset: digits\neval: {every: 10, samples: 50}",
     "eval.samples=50 is below the 64-d features of the fd_domain extractor"),
    # an encoded folder: auto means fid only when Inception weights are given
    ("dataset: random\n", "dataset: /data/latents\neval: {samples: 1000}\n",
     "eval.samples=1000 is below the 2048-d features of the fid extractor"),
])
def test_cross_field_rules(tmp_path, old, new, expected):
    text = VALID.replace("head_dim: 16}", "head_dim: 16, patch: [2, 4]}") if "patch" in expected else VALID
    if "fid extractor" in expected:
        text = text.replace("batch: 8}", "batch: 8, inception_weights: /w/inception.pth}")
    assert old in text
    assert expected in problems(tmp_path, text.replace(old, new))


def test_resources_rules(tmp_path):
    assert "resources.gpus: Input should be less than or equal to 1" in problems(
        tmp_path, VALID + "resources: {gpus: 2}\n")
    assert "each worker needs gpus: 1" in problems(tmp_path, VALID + "resources: {gpus: 0.5, workers: 2}\n")
    spec = load_spec(write(tmp_path, VALID + "resources: {gpus: 0.25}\nmax_concurrent: 8\n"))
    assert spec.resources.gpus == 0.25 and spec.max_concurrent == 8


def test_discriminator_grid_and_named_sizes(tmp_path):
    text = VALID.replace("head_dim: 16}", "head_dim: 16, sizes: [S], discriminator: {widths: [32], depths: [2], heads: 2}}")
    spec = load_spec(write(tmp_path, text))
    assert spec.model.shapes() == [("S", 384, 12, 6), ("w32-d4", 32, 4, 2), ("w64-d4", 64, 4, 4)]
    assert spec.model.discriminator.shapes() == [("w32-d2", 32, 2, 2)]
    assert "model.discriminator.head: unknown key (did you mean 'heads'?)" in problems(
        tmp_path, text.replace("depths: [2], heads", "depths: [2], head"))


def test_base_config_applies_preset_train_budget_and_eval(tmp_path):
    text = """
    name: d
    dataset: digits
    preset: digits
    model: {widths: [64], depths: [4], heads: 4}
    lr: {base_lrs: [1e-3], base_width: 64}
    budget: {kimg: 1.0}
    eval: {every: 50, samples: 500}
    train: {batch: 24}
    """
    cfg = load_spec(write(tmp_path, text)).base_config()
    assert cfg.batch == 24 and cfg.iterations == 42  # ceil(1000 / 24)
    assert cfg.d_proj_dim == 256 and cfg.dataset == "digits"  # from the preset
    assert (cfg.eval_every, cfg.eval_samples, cfg.eval_metric) == (50, 500, "auto")


def test_paths_and_defaults_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = load_spec(write(tmp_path, VALID.replace("dataset: random", "dataset: data/latents\neval: {every: -1}")))
    assert spec.base_config().dataset == str(tmp_path / "data" / "latents")
    assert spec.output_path() == tmp_path / "outputs" / "t" == default_output_dir("t")
    assert [dataset_path(d) for d in ("digits", "random", "~/x")] == ["digits", "random", str(Path.home() / "x")]
    assert spec.tracking() == f"sqlite:///{tmp_path}/outputs/t/mlflow.db"


def test_cluster_address_refuses_node_local_settings(tmp_path):
    def spec(**settings):
        return load_spec(write(tmp_path, VALID + "".join(f"{k}: {v}\n" for k, v in settings.items())))

    spec(output_dir="/tmp/sweep").check_cluster_settings()  # a local Ray instance: fine
    with pytest.raises(ConfigError, match=r"^tracking_uri: sqlite:////shared/x/mlflow.db is a file on this machine"):
        spec(output_dir="/shared/x", ray_address="10.0.0.1:6379").check_cluster_settings()
    with pytest.raises(ConfigError, match=r"^output_dir: /tmp/sweep is node-local storage"):
        spec(output_dir="/tmp/sweep", tracking_uri="http://10.0.0.2:5000",
             ray_address="10.0.0.1:6379").check_cluster_settings()
    spec(output_dir="/shared/x", tracking_uri="http://10.0.0.2:5000", ray_address="auto").check_cluster_settings()


def test_local_store_detection():
    assert is_local_store("sqlite:////abs/mlflow.db") and is_local_store("file:///x") and is_local_store("/x/mlruns")
    assert not is_local_store("http://127.0.0.1:5000") and not is_local_store("https://mlflow.example.org")
    assert not is_local_store("postgresql://user@db/mlflow") and not is_local_store("databricks")


def test_missing_file_bad_yaml_and_non_mapping(tmp_path):
    with pytest.raises(FileNotFoundError, match="sweep file not found: .*nope.yaml"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_spec(write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(SweepFileError, match="a sweep file is a YAML mapping"):
        load_spec(write(tmp_path, "- 1\n- 2\n"))
    assert "dataset: missing (required)" in problems(tmp_path, VALID.replace("dataset: random", ""))


def test_json_schema_forbids_unknown_keys_and_documents_fields():
    schema = SweepSpec.model_json_schema()
    json.dumps(schema)
    assert schema["additionalProperties"] is False
    assert {"name", "dataset", "model", "lr", "budget"} <= set(schema["required"])
    lr = schema["$defs"]["LRSpec"]
    assert lr["additionalProperties"] is False
    assert "returns the base LR unchanged" in lr["properties"]["base_width"]["description"]
    assert "batch" in schema["$defs"]["TrainOverrides"]["properties"]


@pytest.mark.parametrize("path", sorted(SWEEPS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_sweep_file_validates(path):
    spec = load_spec(path)
    assert spec.name == path.stem


@pytest.mark.parametrize("rules", ["[gat]", "[mup, constant]"])
def test_width_aware_rules_require_base_width(tmp_path, rules):
    # Issue 11, finding 9: an omitted base_width silently became 768 (gat at width 256 trained at 3x).
    text = VALID.replace("rules: [gat, constant], base_width: 32", f"rules: {rules}")
    msg = problems(tmp_path, text)
    assert "lr.base_width: required with the" in msg and "e.g. base_width: 768" in msg


def test_power_rules_validate_in_one_spelling_and_need_a_base_width(tmp_path):
    spec = load_spec(write(tmp_path, VALID.replace("rules: [gat, constant]", "rules: [gat, power0.50, power-0.25, power1.0]")))
    assert spec.lr.rules == ["gat", "power0.5", "power-0.25", "power1"]
    msg = problems(tmp_path, VALID.replace("rules: [gat, constant], base_width: 32", "rules: [power0.62]"))
    assert "lr.base_width: required with the power0.62 rule" in msg


def test_malformed_or_repeated_rules_name_the_accepted_forms(tmp_path):
    msg = problems(tmp_path, VALID.replace("rules: [gat, constant]", "rules: [powerx, gat, power, power1e-1]"))
    forms = ("choose constant, gat, mup, or power<a> with a decimal exponent a, lr = base_lr * (base_width / "
             "width)^a (e.g. power0.5, power1, power-0.25)")
    assert f"lr.rules.0: unknown LR rule 'powerx'; {forms}" in msg
    assert f"lr.rules.2: unknown LR rule 'power'; {forms}" in msg and "lr.rules.3: unknown LR rule 'power1e-1'" in msg
    assert "lr.rules.1" not in msg
    msg = problems(tmp_path, VALID.replace("rules: [gat, constant]", "rules: [power0.5, gat, power0.50]"))
    assert "lr.rules: power0.5 listed more than once (a power<a> rule is named by its number: power0.50 is power0.5)" in msg
    assert "lr.rules: gat listed more than once\n" in problems(tmp_path, VALID.replace("[gat, constant]", "[gat, gat]")) + "\n"


def test_json_schema_accepts_exactly_the_rule_names_the_spec_accepts():
    """The schema an editor validates with (gat-sweep schema) is a valid JSON schema and agrees with
    the spec on rule names: the named rules and the power<a> pattern."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = SweepSpec.model_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    rules = schema["$defs"]["LRSpec"]["properties"]["rules"]
    assert "power<a>" in rules["description"] and "power0.62" in rules["description"]
    item = {**rules["items"], "$defs": schema["$defs"]}
    for name, ok in (("gat", True), ("mup", True), ("power0.5", True), ("power-0.25", True), ("power10", True),
                     ("powerx", False), ("power", False), ("power.5", False), ("power1e-1", False), ("sqrt", False)):
        assert jsonschema.Draft202012Validator(item).is_valid(name) == ok, name


def test_constant_rule_needs_no_base_width(tmp_path):
    spec = load_spec(write(tmp_path, VALID.replace("rules: [gat, constant], base_width: 32", "rules: [constant]")))
    assert spec.lr.base_width is None
    assert spec.lr.describe() == "lr rules constant; base LRs 0.0001, 0.00025; no base width (constant only)"


def test_cluster_storage_rules_have_no_gaps(tmp_path, monkeypatch):
    # Issue 11, finding 10: with a cluster address the node-local default output_dir and relative
    # paths were accepted, and `local` (a local Ray instance) was refused as if it were a cluster.
    monkeypatch.chdir(tmp_path)
    server = "tracking_uri: http://10.0.0.2:5000\nray_address: 10.0.0.1:6379\n"
    with pytest.raises(ConfigError, match=r"^output_dir: not set, so the sweep would write to .*/outputs/t on this"):
        load_spec(write(tmp_path, VALID + server)).check_cluster_settings()
    with pytest.raises(ConfigError, match=r"^output_dir: out/t is a relative path"):
        load_spec(write(tmp_path, VALID + server + "output_dir: out/t\n")).check_cluster_settings()
    local = load_spec(write(tmp_path, VALID + "ray_address: local\n"))
    local.check_cluster_settings()  # sqlite in the default output_dir: fine on a local instance
    assert not local.is_cluster()


def test_environment_sits_between_the_sweep_file_and_the_default(tmp_path, monkeypatch):
    # Issue 13, finding 1: RAY_ADDRESS was overridden with 'local' (a second Ray inside `ray job
    # submit`) and MLFLOW_TRACKING_URI was ignored. Precedence: flag > sweep file > environment > default.
    monkeypatch.chdir(tmp_path)
    plain = load_spec(write(tmp_path, VALID))
    assert (plain.ray_target(), plain.tracking()) == ("local", f"sqlite:///{tmp_path}/outputs/t/mlflow.db")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert (plain.ray_target(), plain.tracking()) == ("10.0.0.1:6379", "http://env:5000")
    assert plain.is_cluster()
    with pytest.raises(ConfigError, match=r"^output_dir: not set, .* Ray cluster at 10.0.0.1:6379"):
        plain.check_cluster_settings()
    from_file = load_spec(write(tmp_path, VALID + "ray_address: local\ntracking_uri: http://file:5000\n"))
    assert (from_file.ray_target(), from_file.tracking()) == ("local", "http://file:5000")
    flag = from_file.model_copy(update={"ray_address": "auto", "tracking_uri": "http://flag:5000"})  # as `run` does
    assert (flag.ray_target(), flag.tracking()) == ("auto", "http://flag:5000")


def test_set_overrides_are_validated_as_the_file_and_recorded(tmp_path):
    # Issue 13, finding 2: `gat-sweep run FILE --set key=value`; the sweep's sweep.yaml records
    # the merged file, which loads to the same spec.
    path = write(tmp_path, VALID)
    spec = load_spec(path, ["train.batch=16", "seeds=[0, 1]", "lr.base_lrs=[1e-3]"])
    assert (spec.train.batch, spec.seeds, spec.lr.base_lrs) == (16, [0, 1], [1e-3])
    assert load_spec(path).file_text() == path.read_text()
    recorded = tmp_path / "recorded.yaml"
    recorded.write_text(spec.file_text())
    assert spec.file_text().startswith(f"# {path} with these overrides applied (gat-sweep run --set):\n"
                                       "#   --set train.batch=16\n")
    assert load_spec(recorded) == spec
    with pytest.raises(ConfigError, match=r"budget.iterations: Input should be greater than 0 \(got 0\)"):
        load_spec(path, ["budget.iterations=0"])
