"""``jaxqfl run --uplink A,B --quant P,Q --seeds ...``: one program, each config repeatable as its single run."""
import json

import pytest

from cli_refusals import assert_refused_before_any_work
from jaxqfl.cli.main import main

SYNTH = ["--dataset", "synthetic", "--num-clients", "12", "--cohort-size", "4", "--rounds", "2", "--eval-every", "2",
         "--local-steps", "2", "--devices", "2", "--chunk-size", "2", "--no-progress"]


@pytest.mark.slow  # 18 s; the engine's codec/preset sweep equals its single runs in test_sweep_variants
def test_a_codec_and_preset_sweep_is_one_program_and_each_config_is_its_single_run(tmp_path):
    out = tmp_path / "sweep"
    argv = ["run", *SYNTH, "--uplink", "qsgd:2,qsgd:16,none", "--quant", "none,w8", "--seeds", "0-1"]
    assert main([*argv, "--out", str(out)]) == 0
    report = json.loads((out / "sweep.json").read_text())
    assert report["num_configs"] == 12 and report["swept"] == ["quant", "uplink"]
    bits = {(c["uplink"], c["quant"]): c["uplink_bits_total"] for c in report["configs"]}
    assert bits[("qsgd:2", "none")] < bits[("qsgd:16", "none")] == bits[("qsgd:16", "w8")]
    rows = {(r["uplink"], r["quant"]): r for r in report["by_hyperparameters"]}
    assert rows[("qsgd:2", "w8")]["seeds"] == [0, 1] and rows[("qsgd:2", "w8")]["uplink_bits_mean"] > 0
    assert "| uplink bits |" in (out / "sweep.md").read_text()
    config = next(c for c in report["configs"] if c["uplink"] == "qsgd:16" and c["quant"] == "w8" and c["seed"] == 1)
    swept = json.loads((out / config["folder"] / "summary.json").read_text())
    assert swept["bops"] > 0 and swept["config"]["uplink"] == "qsgd:16"
    single = tmp_path / "single"
    assert main(["run", "--config", str(out / config["folder"] / "config.toml"), "--out", str(single),
                 "--no-progress"]) == 0
    alone = json.loads((single / "summary.json").read_text())
    assert alone["uplink_bits_total"] == swept["uplink_bits_total"] and alone["bops"] == swept["bops"]
    assert alone["final_loss"] == pytest.approx(swept["final_loss"], rel=1e-5)
    again = tmp_path / "again"  # the sweep's config.toml holds the lists: it repeats the sweep
    assert main(["run", "--config", str(out / "config.toml"), "--out", str(again), "--no-progress"]) == 0
    assert json.loads((again / "sweep.json").read_text())["configs"] == report["configs"]
    assert main(["plot", str(out), "--out", str(tmp_path / "front.png")]) == 0  # labels hold specs and presets
    assert (tmp_path / "front.png").stat().st_size > 0


@pytest.mark.parametrize("argv,message", [
    (["--uplink", "qsgd:4,qsgd:4"], "a list takes each value once"),
    (["--uplink", "qsgd:4,,none"], "a list takes each value once"),
    (["--uplink", "qsgd:4,qsgd:4:bucket=512"], "are the same codec"),
    (["--uplink", "qsgd:4,qsgd:x"], "invalid codec spec 'qsgd:x'"),
    (["--downlink", "uniform:8,uniform:99"], "uniform bits must be an integer in [1, 16]"),
    (["--quant", "none,w3"], "--quant 'w3' is not a preset"),
    (["--quant", "none,list"], "'list' prints the presets' costs"),
    (["--uplink", "qsgd:4,sign", "--integer-aggregation"], "got --uplink 'sign'"),
])
def test_bad_lists_are_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message):
    assert_refused_before_any_work(tmp_path, capsys, monkeypatch, [*SYNTH, *argv], message)
