"""One rule for settings that would do nothing or cannot work: refused before any work, naming both flags."""
import tomllib

import pytest

from cli_refusals import assert_refused_before_any_work

_SMALL = ["--num-clients", "50", "--cohort-size", "10"]


@pytest.mark.parametrize("argv,message", [
    (["--byzantine-fraction", "0.3"], "--byzantine-fraction applies to an --attack"),
    (["--attack-scale", "2"], "--attack-scale applies to an --attack"),
    (["--trim-fraction", "0.1"], "--trim-fraction applies to --aggregator trimmed-mean / krum / multi-krum / bulyan"),
    (["--aggregator", "median", "--trim-fraction", "0.1"], "does nothing with --aggregator median"),
    (["--aggregator", "krum", "--krum-m", "3"], "--krum-m applies to --aggregator multi-krum"),
    (["--krum-m", "3"], "does nothing with --aggregator mean"),
    (["--clip-radius", "2"], "--clip-radius applies to --aggregator centered-clip / norm-bound"),
    (_SMALL + ["--aggregator", "multi-krum", "--krum-m", "11"], "allowed: 1 <= --krum-m <= 10"),
    (_SMALL + ["--aggregator", "bulyan"], "bulyan needs a cohort of at least 4f + 3 = 11"),
    (_SMALL + ["--aggregator", "bulyan"], "allowed: --cohort-size 11 or --trim-fraction below 0.2"),
    (_SMALL + ["--aggregator", "krum", "--trim-fraction", "0.45"], "krum needs a cohort of at least 2f + 3 = 11"),
    (["--num-clients", "50", "--cohort-size", "2", "--aggregator", "multi-krum"], "at least 2f + 3 = 3"),
    (["--model", "logreg", "--hidden", "50"], "--hidden sets the MLP's hidden sizes; it does nothing with --model logreg"),
    (["--mu", "0.1"], "--mu applies to --algorithm fedprox"),  # the rule these follow
    (["--quant", "FULLL"], "--quant 'fulll' is not a preset"),
])
def test_settings_that_do_nothing_or_cannot_work_are_refused(tmp_path, capsys, monkeypatch, argv, message):
    assert_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message)


def test_two_spellings_of_one_key_in_a_config_file_are_refused(tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "run.toml"
    cfg.write_text('client-lr = 0.1\nclient_lr = 0.2\nrounds = 3\n')
    assert_refused_before_any_work(tmp_path, capsys, monkeypatch, ["--config", str(cfg)],
                                   "'client-lr' and 'client_lr' are two spellings of one setting")


def _printed_config(capsys, argv):
    from jaxqfl.cli.main import main

    assert main(["run", *argv, "--print-config"]) == 0
    return tomllib.loads(capsys.readouterr().out)


def test_names_are_case_insensitive_for_quant_and_codecs_and_stored_lowercase(capsys):
    cfg = _printed_config(capsys, ["--quant", "FULL", "--uplink", "QSGD:4+EF", "--downlink", "Uniform:8"])
    assert (cfg["quant"], cfg["uplink"], cfg["downlink"]) == ("full", "qsgd:4+ef", "uniform:8")


def test_defaults_are_filled_only_where_they_are_read(capsys):
    plain = _printed_config(capsys, [])  # logreg, mean, no attack
    assert not {"hidden", "trim-fraction", "clip-radius", "byzantine-fraction", "krum-m"} & set(plain)
    robust = _printed_config(capsys, ["--model", "mlp", "--aggregator", "multi-krum", "--attack", "sign-flip"])
    assert robust["hidden"] == [200, 200] and robust["trim-fraction"] == 0.2
    assert robust["byzantine-fraction"] == 0.2 and "clip-radius" not in robust
