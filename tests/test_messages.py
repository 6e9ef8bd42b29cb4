"""Refusal messages name the real flag or argument (issue 21): no advice about a flag that does not exist."""
import numpy as np
import pytest

from cli_refusals import assert_refused_before_any_work


@pytest.mark.parametrize(
    "argv,message",
    [
        # a folder is not "no such file": say what it is and what is wanted
        (["--dataset", "mnist", "--data-path", "{tmp}"], "is a folder; --dataset mnist reads one file"),
        (["--dataset", "leaf", "--data-path", __file__], "is a file; --dataset leaf reads a folder"),
        (["--config", "{tmp}"], "is a folder; --config takes a TOML file"),
    ],
)
def test_refusal_names_what_the_user_can_change(tmp_path, capsys, monkeypatch, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message)


def test_too_small_clients_advice_is_a_flag_jaxqfl_run_has(tmp_path, capsys):
    from jaxqfl.cli.main import main

    with pytest.raises(SystemExit) as exc:  # the 10% hold-out takes no row of a 5-row client
        main(["run", "--out", str(tmp_path / "o"), "--num-clients", "10", "--cohort-size", "2",
              "--min-client-size", "5", "--max-client-size", "5", "--rounds", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "raise --min-client-size or --client-size-mean" in err and "raise test_fraction" not in err


def test_out_in_a_config_file_is_named_as_a_command_line_flag(tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text('out = "runs/x"\n')
    assert_refused_before_any_work(tmp_path, capsys, monkeypatch, ["--config", str(cfg)],
                                   "'out' is not read from a config file")
    cfg.write_text('resume = "runs/x"\n')
    assert_refused_before_any_work(tmp_path, capsys, monkeypatch, ["--config", str(cfg)], "pass --resume")


def test_from_arrays_natural_hold_out_advice_names_the_arguments():
    from jaxqfl.data.arrays import from_arrays

    x = np.zeros((8, 2), np.float32)
    y = np.arange(8) % 2
    with pytest.raises(ValueError) as e:
        from_arrays(x, y, client_ids=np.arange(8) % 4)  # 2 rows per client: 10% holds out none
    assert "pass x_test and y_test, or (Python API) a larger test_fraction" in str(e.value)
