"""``jaxqfl run --lora-rank``: a pretrained run's model fine-tuned as QLoRA, what it records, what it refuses."""
import json

import numpy as np
import pytest

from cli_refusals import assert_refused_before_any_work
from jaxqfl.experiment import lora_rules
from jaxqfl.cli.main import main

COMMON = ["--dataset", "synthetic", "--model", "mlp", "--hidden", "16", "--num-clients", "20", "--cohort-size", "8",
          "--local-steps", "2", "--devices", "2", "--no-progress"]


def _pretrained_mlp(path, features=60, hidden=16, classes=10):
    """A params file as any Flax training writes it: ``{'params': ...}`` of the MLP, random values."""
    from jaxqfl.models.serialization import save_params

    rng = np.random.default_rng(0)
    params = {"Dense_0": {"kernel": rng.normal(0, 0.2, (features, hidden)), "bias": rng.normal(0, 0.1, hidden)},
              "Dense_1": {"kernel": rng.normal(0, 0.2, (hidden, classes)), "bias": rng.normal(0, 0.1, classes)}}
    params = {k: {n: v.astype(np.float32) for n, v in d.items()} for k, d in params.items()}
    save_params(path, {"params": params})
    return params


@pytest.mark.slow
def test_pretrained_params_are_fine_tuned_as_qlora_with_tier_ranks_and_product_averaging(tmp_path):
    from jaxqfl.models.serialization import load_params

    pretrained = _pretrained_mlp(tmp_path / "pretrained.msgpack")
    out = tmp_path / "qlora"
    assert main(["run", *COMMON, "--rounds", "2", "--out", str(out), "--init-from", str(tmp_path / "pretrained.msgpack"),
                 "--lora-rank", "4", "--lora-tier-ranks", "4,2", "--base-quant", "nf4",
                 "--lora-aggregation", "product"]) == 0
    s = json.loads((out / "summary.json").read_text())
    num_base = sum(v.size for d in pretrained.values() for v in d.values())
    assert s["adapter_params"] == s["num_params"] == 4 * (60 + 16) + 4 * (16 + 10)  # the two kernels' A and B
    assert s["base_params"] == num_base
    # NF4 kernels of 15 and 3 blocks of 64 (2 codes a byte, an int8 scale code a block, a float32 per 256
    # scales and a float32 mean each), float32 biases
    assert s["base_bytes"] == (15 + 3) * 32 + (15 + 3) + 2 * (4 + 4) + 4 * (16 + 10)
    assert s["uplink_bits_total"] == 2 * 8 * 32 * s["adapter_params"]  # only adapters travel
    assert s["lora_tier_ranks"] == [4, 2] and s["base_quant"] == "nf4" and s["lora_aggregation"] == "product"
    merged = load_params(out / lora_rules.MERGED_PARAMS)
    for layer in pretrained:  # the merged model has the pretrained model's structure and moved from it
        for name, value in pretrained[layer].items():
            assert merged[layer][name].shape == value.shape
    assert 0 < np.abs(merged["Dense_0"]["kernel"] - pretrained["Dense_0"]["kernel"]).max() < 1.0
    np.testing.assert_array_equal(merged["Dense_0"]["bias"], pretrained["Dense_0"]["bias"])  # not adapted: kept
    assert set(load_params(out / "final_params.msgpack")) == {"Dense_0", "Dense_1"}  # adapters only
    from jaxqfl.lora import base_quant

    served = base_quant.load(out / lora_rules.merged_quantized("nf4"))  # re-quantized for serving
    assert base_quant.base_bytes(served) == s["base_bytes"]  # the base's own NF4 storage, same shapes
    again = base_quant.dequantize_base(served)
    step = np.abs(merged["Dense_0"]["kernel"]).max() * 0.28  # NF4's widest gap times the largest scale
    assert 0 < np.abs(np.asarray(again["Dense_0"]["kernel"]) - merged["Dense_0"]["kernel"]).max() <= step


def test_lora_flags_mirror_the_library():
    from jaxqfl import lora
    from jaxqfl.lora import base_quant

    assert lora_rules.BASE_FORMATS == base_quant.FORMATS and lora_rules.DEFAULT_TARGETS == lora.DEFAULT_TARGETS


@pytest.mark.parametrize("argv,message", [
    (["--base-quant", "nf4"], "add --lora-rank"),
    (["--lora-rank", "2", "--lora-tier-ranks", "4,1"], "at most --lora-rank 2"),
    (["--lora-rank", "2", "--quant", "w4a8"], "does not combine"),
    (["--lora-rank", "2", "--lora-targets", "(("], "not a regular expression"),
    (["--init-from", "/no/such/run"], "no such file"),
    (["--lora-rank", "2", "--lora-aggregation", "product", "--aggregator", "median"],
     "does not combine with --aggregator median"),
    (["--lora-aggregation", "product"], "add --lora-rank"),
])
def test_bad_lora_flags_are_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message):
    assert_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message)


def test_pretrained_params_of_another_model_are_refused_before_training(tmp_path, capsys):
    _pretrained_mlp(tmp_path / "wide.msgpack", hidden=32)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["run", *COMMON, "--rounds", "1", "--out", str(out), "--init-from", str(tmp_path / "wide.msgpack"),
              "--lora-rank", "2"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "do not fit the model" in err and "Dense_0/kernel (60, 32) vs the model's (60, 16)" in err
    assert not (out / "metrics.jsonl").exists() and not (out / "summary.json").exists()


def test_a_rank_past_a_kernels_smaller_side_is_warned_about_naming_the_kernel(tmp_path, capsys):
    """--lora-rank 12 on the MLP's 60 x 16 and 16 x 10 kernels: the second (smaller side 10) is adapted at full
    rank, the first is not; the run goes on (a warning, not a refusal)."""
    assert main(["run", *COMMON, "--rounds", "1", "--out", str(tmp_path / "r"), "--lora-rank", "12"]) == 0
    err = capsys.readouterr().err
    assert "warning: --lora-rank 12" in err and "Dense_1/kernel (16 x 10)" in err and "Dense_0" not in err
    assert main(["run", *COMMON, "--rounds", "1", "--out", str(tmp_path / "r4"), "--lora-rank", "4"]) == 0
    assert "warning" not in capsys.readouterr().err
