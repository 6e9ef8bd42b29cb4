"""``jaxqfl run`` refuses zoo models and text/CIFAR flags that do not fit, before any work (exit 2)."""
import pytest

from cli_refusals import assert_refused_before_any_work


@pytest.fixture
def text_dir(tmp_path):
    d = tmp_path / "texts"
    d.mkdir()
    (d / "a.txt").write_text("to be or not to be\n%\nthat is the question\n" * 5)
    return d


@pytest.mark.parametrize("argv, message", [
    (["--model", "mlp"], "--model mlp does not predict tokens"),
    (["--partition", "dirichlet", "--num-clients", "2"], "--partition dirichlet splits by class label"),
    (["--task", "classification"], "--task classification does not fit --dataset text"),
    (["--model", "transformer", "--transformer-width", "30", "--transformer-heads", "4"],
     "--transformer-width 30 is not a multiple of --transformer-heads 4"),
    (["--attack", "label-flip"], "--attack label-flip relabels classes"),
])
def test_text_runs_refuse_bad_flags(tmp_path, capsys, monkeypatch, text_dir, argv, message):
    assert_refused_before_any_work(tmp_path, capsys, monkeypatch,
                                   ["--dataset", "text", "--data-path", str(text_dir), "--cohort-size", "1", *argv],
                                   message)


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "synthetic", "--model", "lstm"], "--model lstm predicts the next token"),
    (["--dataset", "synthetic", "--model", "resnet20"], "--model resnet20 reads images"),
    (["--dataset", "cifar10"], "--dataset cifar10 needs --data-path DIR"),
    (["--dataset", "mnist", "--task", "next-token", "--data-path", "."], "--task next-token needs text"),
    (["--dataset", "synthetic", "--entries-per-client", "3"], "--entries-per-client applies to --dataset text"),
])
def test_zoo_runs_refuse_mismatched_data(tmp_path, capsys, monkeypatch, argv, message):
    if "--data-path" in argv:  # mnist needs a file: give it one so the task check is what refuses
        f = tmp_path / "m.npz"
        f.write_bytes(b"")
        argv = [a if a != "." else str(f) for a in argv]
    assert_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message)


def test_resnet_on_flat_features_is_refused_after_loading_with_exit_2(tmp_path, capsys):
    import numpy as np

    from jaxqfl.cli.main import main

    path = tmp_path / "flat.npz"
    np.savez(path, x=np.zeros((20, 5), np.float32), y=np.arange(20) % 2, client_id=np.arange(20) % 2)
    with pytest.raises(SystemExit) as exc:
        main(["run", "--dataset", "npz", "--data-path", str(path), "--model", "resnet20", "--cohort-size", "1",
              "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--model resnet20 reads images" in err and "[5]" in err
    assert "Traceback" not in err
