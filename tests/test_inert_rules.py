"""Data and architecture settings given to a run that does not read them are refused by name (README: "flags that
do nothing are refused"); a run that reads them takes them. A review found each of these accepted, recorded in
config.toml and ignored."""
import pytest

from cli_refusals import assert_refused_before_any_work
from jaxqfl.cli.main import main
from jaxqfl.experiment.experiment import Experiment
from jaxqfl.experiment.inert_rules import READ_BY

TEXT = "/work/shared/data/fortunes"  # not read: the refusals come before any data


@pytest.mark.parametrize("argv,message", [
    (["--alpha", "0.1"], "--alpha applies to --partition dirichlet, not to this run (the dataset's own partition"),
    (["--partition", "iid", "--shards-per-client", "3"], "--shards-per-client applies to --partition shards"),
    (["--sigma", "2"], "--sigma applies to --partition quantity"),
    (["--noise", "2"], "--noise applies to --dataset synthetic-regression, not to this run (--dataset synthetic"),
    (["--num-outputs", "3"], "--num-outputs applies to --dataset synthetic-regression"),
    (["--components", "5"], "--components applies to --dataset gaussian-mixture"),
    (["--dataset", "gaussian-mixture", "--synthetic-alpha", "0.5"], "--synthetic-alpha applies to --dataset synthetic"),
    (["--dataset", "npz", "--data-path", "x.npz", "--num-features", "5"], "--num-features applies to the generated"),
    (["--context", "40"], "--context applies to --dataset text"),
    (["--lstm-hidden", "16"], "--lstm-hidden applies to --model lstm, not to this run (--model logreg"),
    (["--model", "mlp", "--transformer-heads", "2"], "--transformer-heads applies to --model transformer"),
    (["--resnet-groups", "4"], "--resnet-groups applies to --model resnet20"),
    (["--kmeans", "minibatch"], "--kmeans applies to --task clustering"),
    (["--test-clients", "5"], "--test-clients applies to --population procedural"),
])
def test_a_setting_the_run_does_not_read_is_refused_naming_who_reads_it(tmp_path, capsys, monkeypatch, argv, message):
    assert_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message)


@pytest.mark.parametrize("argv", [
    ["--partition", "dirichlet", "--alpha", "0.1"],
    ["--dataset", "synthetic-regression", "--noise", "2", "--num-outputs", "3"],
    ["--dataset", "gaussian-mixture", "--components", "5", "--kmeans", "minibatch", "--local-steps", "2"],
    ["--dataset", "text", "--data-path", TEXT, "--context", "40", "--lstm-hidden", "16"],
    ["--population", "procedural", "--test-clients", "5"],
    ["--alpha", "0.5"],  # the default: it does nothing either way, and cannot be told from no value
])
def test_a_run_that_reads_the_setting_takes_it(argv, capsys):
    assert main(["run", *argv, "--print-config"]) == 0
    capsys.readouterr()


def test_every_entry_is_a_setting():
    assert set(READ_BY) <= set(Experiment().flat())


def test_a_run_an_earlier_version_ran_with_an_ignored_setting_still_resumes(tmp_path):
    """Its checkpoint's config is kept as it is on resume: an earlier version accepted --alpha 0.1 without
    --partition dirichlet (and ignored it), and such a run continues to the same model."""
    from interrupted_runs import back_to_checkpoint, rewrite_record

    out = tmp_path / "run"
    assert main(["run", "--num-clients", "8", "--cohort-size", "4", "--local-steps", "1", "--batch-size", "4",
                 "--rounds", "4", "--eval-every", "2", "--checkpoint-every", "2", "--no-progress",
                 "--out", str(out)]) == 0
    old = back_to_checkpoint(out, tmp_path / "old", 2)
    rewrite_record(old, 2, alpha=0.1)  # as the earlier version recorded the ignored flag
    assert main(["run", "--resume", str(old), "--no-progress"]) == 0
    assert (old / "final_params.msgpack").read_bytes() == (out / "final_params.msgpack").read_bytes()
