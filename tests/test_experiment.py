"""jaxqfl.Experiment (issue 22): one typed spec behind the flags, the TOML keys and the Python API.

Properties checked:
* the command line, ``jaxqfl.run(Experiment)`` and ``jaxqfl run --config <Experiment.to_toml()>`` write
  bit-identical final models (one run path, whatever the way in);
* ``to_toml`` / ``from_toml`` round-trip every setting, and a run's own ``config.toml`` reads back;
* a value out of range is refused with the same message from Python, TOML and the command line, and a
  meaningless combination by ``validate()`` naming both settings, before anything is built;
* the parsed flags are not changed by the run path (the rules work on a copy).
"""
import dataclasses
import json
import pathlib
import re
import shlex

import numpy as np
import pytest

import jax
from hypothesis import given as given_hypothesis, settings as settings_hypothesis, strategies as st
import jaxqfl
from jaxqfl.cli.main import _parser, main
from jaxqfl.experiment import Experiment, ExperimentError, InvalidValue, settings

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL = dict(dataset="synthetic", num_clients=24, cohort_size=6, rounds=2, eval_every=1, local_steps=3,
             batch_size=5, uplink="qsgd:4", seed=3)


def _argv(flat: dict) -> list[str]:
    out = []
    for k, v in flat.items():
        out += [f"--{k.replace('_', '-')}", ",".join(map(str, v)) if isinstance(v, tuple) else str(v)]
    return out


def test_cli_python_and_toml_runs_write_identical_models(tmp_path):
    exp = Experiment.of(**SMALL)
    assert main(["run", *_argv(SMALL), "--out", str(tmp_path / "cli"), "--no-progress"]) == 0
    outcome = jaxqfl.run(exp, out=tmp_path / "py")
    assert outcome.status == 0 and outcome.out == tmp_path / "py"
    (tmp_path / "exp.toml").write_text(exp.to_toml())
    assert main(["run", "--config", str(tmp_path / "exp.toml"), "--out", str(tmp_path / "toml"), "--no-progress"]) == 0
    models = {w: (tmp_path / w / "final_params.msgpack").read_bytes() for w in ("cli", "py", "toml")}
    assert models["cli"] == models["py"] == models["toml"]
    configs = {w: (tmp_path / w / "config.toml").read_text() for w in ("cli", "py", "toml")}
    assert configs["cli"] == configs["py"] == configs["toml"]
    summary = json.loads((tmp_path / "py" / "summary.json").read_text())
    assert outcome.summary["rounds"] == summary["rounds"] == 2
    # a run's resolved config.toml is an Experiment, and the Experiment of the CLI's flags equals exp
    resolved = Experiment.from_toml(tmp_path / "cli" / "config.toml")
    assert resolved.given().items() >= {k: v for k, v in exp.given().items() if k != "uplink"}.items()


def test_toml_round_trips_every_kind_of_setting(tmp_path):
    exp = Experiment.of(dataset="mnist", data_path="a b/\"q\".npz", client_lr="0.1,0.3", seeds="0-2,7",
                        hidden=(64, 32), stream=True, autotune=False, chunk_size=8, dropout=0.25, alpha=1e-3,
                        sigma=float("inf"), lora_targets=r"(^|/)kernel$", **{"async": "fedbuff"})
    path = tmp_path / "x.toml"
    path.write_text(exp.to_toml())
    back = Experiment.from_toml(path)
    assert back == exp and back.flat() == exp.flat()
    assert back.training.client_lr == (0.1, 0.3) and back.execution.seeds == (0, 1, 2, 7)
    assert back.asynchronous.async_mode == "fedbuff" and back.model.hidden == (64, 32)
    # the command line reads the same file into the same Experiment
    from jaxqfl.cli import experiment_flags, run_setup

    parser = _parser().run_parser
    args = parser.parse_args(["--config", str(path)])
    run_setup.prepare(parser, args, ["--config", str(path)])
    assert experiment_flags.experiment_of(args) == exp


def test_python_values_are_read_by_what_they_are_not_by_their_repr():
    """bytes and arbitrary objects were read as their repr (data_path=b'/x' became the path "b'/x'"); paths and
    NumPy scalars are their text and numbers."""
    import pathlib

    for value in (b"/data/mine.npz", object(), {1}):
        with pytest.raises(InvalidValue, match=r"data.data_path \(--data-path\) = .*: expected text \(a str; a path "
                                               r"may be a pathlib.Path\), a number or a list \(its type is"):
            Experiment.of(data_path=value)
    assert Experiment.of(data_path=pathlib.Path("/data/mine.npz")).data.data_path == "/data/mine.npz"
    exp = Experiment.of(num_clients=np.int64(9), client_lr=np.float32(0.5), cohort_size=np.array(3))
    assert (exp.data.num_clients, exp.training.client_lr, exp.training.cohort_size) == (9, (0.5,), 3)
    assert Experiment.of(client_lr=np.array([0.5, 0.25])).training.client_lr == (0.5, 0.25)  # a sweep's values
    with pytest.raises(InvalidValue, match="expected text"):
        Experiment.of(client_lr=np.ones((2, 2)))  # a 2-d array is no list of values


def test_seeds_keep_their_32_bits_under_the_32_bit_bound_of_counts():
    exp = Experiment.of(seed=2**32 - 1, data_seed=2**31)
    assert (exp.execution.seed, exp.execution.data_seed) == (2**32 - 1, 2**31)


@pytest.mark.parametrize("name,value,message", [
    ("client_lr", -1, "expected a positive finite number (at most 3.403e+38 in magnitude: float32), got -1"),
    ("client_lr", 1e300, "expected a positive finite number (at most 3.403e+38 in magnitude: float32), got 1e+300"),  # finite in float64, infinite in the programs' float32
    ("rounds", 0, "expected a positive integer, got '0'"),
    ("rounds", 10**20, "expected a positive integer of at most 9223372036854775807 (64 bits), got '100000000000000000000'"),
    ("rounds", 2**31, "expected a positive integer of at most 2147483647 (a run counts its rounds in 32 bits)"),
    ("eval_every", 10**20, "expected a positive integer of at most 2147483647 (jaxqfl's programs count in 32-bit "
                           "integers), got '100000000000000000000'"),
    # each reached a program as an int32 and failed there with a traceback (wrapped to a negative count)
    ("local_epochs", 2**31, "expected a positive integer of at most 2147483647 (jaxqfl's programs count in 32-bit"),
    ("personal_eval", 2**31, "expected a non-negative integer of at most 2147483647 (jaxqfl's programs count in"),
    ("num_clients", 2**31, "expected a positive integer of at most 2147483647"),
    ("local_steps", "1,,2", "expected positive integers separated by commas, none empty, got '1,,2'"),
    ("dropout", 1.0, "--dropout must be in [0, 1), got '1.0'"),
    ("dataset", "imagenet", "is not one of synthetic"),
    ("seeds", "3-1", "--seeds takes distinct non-negative integers"),
    ("seed", 2**32, "expected a seed in [0, 4294967295] (a run's key holds 32 bits of it"),  # 2**32 ran as seed 0
    ("seeds", "1,4294967297", "--seeds takes seeds in [0, 4294967295]"),  # two seeds, one run twice
    ("seeds", "0-100000000000000", "more than 10,000 seeds; a sweep runs at most 10,000 configs"),  # listed first
    ("feddyn_alpha", 0, "expected a positive finite number (at most 3.403e+38 in magnitude: float32), got 0"),  # registry hyper-parameters: same path
    ("krum_m", 0, "expected a positive integer, got '0'"),
])
def test_a_bad_value_is_refused_alike_from_python_toml_and_the_command_line(tmp_path, capsys, name, value, message):
    with pytest.raises(InvalidValue, match=re.escape(message)) as py:
        Experiment.of(**{name: value})
    assert f"(--{name.replace('_', '-')})" in str(py.value)  # names the setting and its flag
    path = tmp_path / "bad.toml"
    path.write_text(f"{name.replace('_', '-')} = {json.dumps(value)}\n")
    with pytest.raises(InvalidValue, match=re.escape(message)):
        Experiment.from_toml(path)
    for argv in (["run", f"--{name.replace('_', '-')}", str(value)], ["run", "--config", str(path)]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2, err
        if name == "dataset" and "--config" not in argv:  # argparse words a bad choice its own way
            assert "invalid choice: 'imagenet'" in err and "'synthetic', 'synthetic-regression'" in err
        else:
            assert message.split(",")[0] in err, err


def test_unknown_settings_tables_and_section_types_are_refused(tmp_path):
    with pytest.raises(InvalidValue, match="unknown setting 'clinet_lr'; did you mean client_lr"):
        Experiment.of(clinet_lr=0.1)
    (tmp_path / "t.toml").write_text("[training]\nrounds = 3\n")
    with pytest.raises(InvalidValue, match=r"tables \(\[training\]\) are not used"):
        Experiment.from_toml(tmp_path / "t.toml")
    with pytest.raises(InvalidValue, match="no such file"):
        Experiment.from_toml(tmp_path / "missing.toml")
    with pytest.raises(InvalidValue, match="Experiment.training must be a Training"):
        Experiment(training={"rounds": 3})
    with pytest.raises(InvalidValue, match="takes true or false"):
        Experiment.of(stream="yes")
    with pytest.raises(dataclasses.FrozenInstanceError):
        Experiment().training.rounds = 3


def test_a_toml_date_is_refused_from_the_file_not_a_traceback(tmp_path, capsys):
    """A TOML datetime was read as its text and then failed in naming the file's values (TypeError)."""
    (tmp_path / "d.toml").write_text("data-path = 1979-05-27T07:32:00Z\n")
    with pytest.raises(InvalidValue, match=r"data.data_path \(--data-path\) = datetime.datetime\(1979.*its type is "
                                           r"datetime"):
        Experiment.from_toml(tmp_path / "d.toml")
    with pytest.raises(SystemExit) as e:
        main(["run", "--config", str(tmp_path / "d.toml"), "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "a TOML datetime is no setting's value; write text in quotes" in err and "Traceback" not in err


@pytest.mark.parametrize("given,named", [
    (dict(mu=0.1), ["--mu", "--algorithm"]),
    (dict(trim_fraction=0.1), ["--trim-fraction", "--aggregator"]),
    (dict(secure_aggregation="secagg", uplink="topk:0.1"), ["--secure-aggregation", "--uplink"]),
    (dict(seeds="0-1", stream=True), ["--stream"]),
])
def test_validate_refuses_meaningless_combinations_naming_the_settings(given, named):
    exp = Experiment.of(**given)
    with pytest.raises(ExperimentError) as e:
        exp.validate()
    for flag in named:
        assert flag in str(e.value), (flag, str(e.value))
    assert exp == Experiment.of(**given)  # validate() resolved a copy
    assert Experiment.of(algorithm="fedprox", mu=0.1).validate().algorithm.mu == (0.1,)


def test_the_run_path_leaves_the_parsed_flags_unchanged():
    from jaxqfl.cli import experiment_flags
    from jaxqfl.experiment import pipeline

    parser = _parser().run_parser
    args = parser.parse_args(["--rounds", "3", "--client-lr", "0.1,0.2", "--seeds", "0-1"])
    before = dict(vars(args))
    resolved = experiment_flags.settings_of_args(args)
    pipeline.resolve(resolved, parser)
    assert vars(args) == before
    assert resolved.client_lr == 0.1 and resolved.sweep_values == {"client_lr": [0.1, 0.2]}


def test_jaxqfl_run_refuses_bad_options_before_any_work(tmp_path):
    with pytest.raises(ExperimentError, match="takes a jaxqfl.Experiment, got dict"):
        jaxqfl.run({"rounds": 3})
    with pytest.raises(ExperimentError, match="unknown metrics sink 'wandb'"):
        jaxqfl.run(Experiment.of(**SMALL), log="wandb")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(ExperimentError) as refused:  # named as Python takes them, not as the command's flags
        jaxqfl.run(Experiment.of(**SMALL), out=tmp_path / "full")
    assert "add overwrite=True" in str(refused.value) and "--" not in str(refused.value)
    assert f"jaxqfl.resume('{tmp_path / 'full'}')" in str(refused.value)
    assert (tmp_path / "full" / "keep.txt").read_text() == "x"


def test_jaxqfl_run_raises_what_it_refuses_and_takes_only_folder_paths(tmp_path, monkeypatch):
    """A refusal found once the data was read (engine.build's, the memory check's) was printed and returned as
    status 2 with out naming a folder never made; "" wrote the run into the working folder, b"x" and 5 made folders
    named b' and 5."""
    monkeypatch.chdir(tmp_path)
    for out, message in (("", "out is an empty path"), (b"runs/x", "takes a folder path"), (5, "takes a folder path")):
        with pytest.raises(ExperimentError, match=message):
            jaxqfl.run(Experiment.of(**SMALL), out=out)
    with pytest.raises(ExperimentError, match=message):
        jaxqfl.resume(5)
    more = jax.device_count() + 1
    with pytest.raises(ExperimentError, match=rf"--devices {more}, but this process's JAX sees {more - 1} \(cpu\)"):
        jaxqfl.run(Experiment.of(**{**SMALL, "devices": more}), out=tmp_path / "d")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, no lock left behind


def test_every_flag_of_jaxqfl_run_is_a_setting_or_an_invocation_option():
    from jaxqfl.cli.experiment_flags import INVOCATION

    dests = {a.dest for a in _parser().run_parser._actions if a.option_strings} - {"help"}
    names = {info.dest for _, _, info in settings()}
    assert dests == names | set(INVOCATION) and not names & set(INVOCATION)
    assert all(info.help for _, _, info in settings())  # every setting has its one-line doc


def _readme_run_commands():
    readme = (ROOT / "README.md").read_text()
    text = "\n".join(re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)).replace("\\\n", " ")
    cmds = [shlex.split(line.split("#")[0]) for line in text.splitlines() if line.strip().startswith("jaxqfl run ")]
    return [c[2:] for c in cmds if "--resume" not in c and "--config" not in c and "DIR" not in " ".join(c)
            and "packed/" not in " ".join(c) and "mine.npz" not in " ".join(c) and "pretrained/" not in " ".join(c)]


def test_every_readme_run_command_is_an_experiment():
    parser = _parser().run_parser
    from jaxqfl.cli import experiment_flags

    commands = _readme_run_commands()
    assert len(commands) >= 10
    for argv in commands:
        exp = experiment_flags.experiment_of(parser.parse_args(argv))
        assert Experiment.of(**exp.given()) == exp


@pytest.mark.slow
@pytest.mark.parametrize("argv", _readme_run_commands(), ids=lambda a: " ".join(a)[:60])
def test_readme_command_and_jaxqfl_run_write_identical_models(tmp_path, argv, monkeypatch):
    """Each README run, cut to 2 rounds: the command and ``jaxqfl.run`` of its Experiment, bit for bit."""
    from jaxqfl.cli import experiment_flags

    monkeypatch.chdir(ROOT)  # README paths are relative to the repository
    words = [w for i, w in enumerate(argv) if w != "--out" and (i == 0 or argv[i - 1] != "--out")]
    short = [*words, "--rounds", "2", "--eval-every", "1", "--checkpoint-every", "1"]
    exp = experiment_flags.experiment_of(_parser().run_parser.parse_args(short))
    assert main(["run", *short, "--out", str(tmp_path / "cli"), "--no-progress"]) == 0
    assert jaxqfl.run(exp, out=tmp_path / "py").status == 0
    cli, py = (tmp_path / "cli" / "final_params.msgpack"), (tmp_path / "py" / "final_params.msgpack")
    if cli.exists() or py.exists():
        assert cli.read_bytes() == py.read_bytes()
    else:  # a sweep or k-means: each config's own folder
        finals = sorted(p.relative_to(tmp_path / "cli") for p in (tmp_path / "cli").rglob("final_params.msgpack"))
        assert finals and all((tmp_path / "cli" / f).read_bytes() == (tmp_path / "py" / f).read_bytes()
                              for f in finals)


def test_the_registries_generate_the_choices_flags_and_defaults():
    """Each registry entry is a --algorithm / --aggregator choice; each hyper-parameter a flag whose help names
    the entries that read it; the chosen entry's defaults are filled in and another's are refused."""
    from jaxqfl import aggregate, algorithms
    from jaxqfl.registry import aggregators as aggregator_registry
    from jaxqfl.registry import algorithms as algorithm_registry

    actions = {a.dest: a for a in _parser().run_parser._actions}
    assert tuple(actions["algorithm"].choices) == algorithm_registry.NAMES
    assert tuple(actions["aggregator"].choices) == aggregator_registry.NAMES
    for hyper in (algorithm_registry.HYPER, aggregator_registry.HYPER):
        for name, (h, users) in hyper.items():
            assert h.doc in actions[name].help and " / ".join(users) in actions[name].help
    from jaxqfl.experiment import algorithm_rules, runner
    from jaxqfl.experiment.resolved import Refuse, settings_of

    for entry in algorithm_registry.ENTRIES:
        s = settings_of(Experiment.of(algorithm=entry.name, client_lr=0.1))
        runner.validate(Refuse(), s)
        for h in entry.hyper:
            assert getattr(s, h.name) == h.default
        built, recorded = algorithm_rules.build(s)
        assert isinstance(built, algorithms.Algorithm) and isinstance(recorded, dict)
    for entry in aggregator_registry.ENTRIES:
        exp = Experiment.of(aggregator=entry.name, cohort_size=20)
        exp.validate()
        agg = aggregate.aggregator_by_name(entry.name)
        assert isinstance(agg, aggregate.Aggregator)
    with pytest.raises(ExperimentError, match="--clip-radius applies to --aggregator centered-clip / norm-bound"):
        Experiment.of(aggregator="median", clip_radius=2.0).validate()
    with pytest.raises(ExperimentError, match=r"--trim-fraction must lie in \[0, 0.25\) for --aggregator bulyan"):
        Experiment.of(aggregator="bulyan", trim_fraction=0.3, cohort_size=40).validate()


def test_the_public_api_is_curated_and_import_jaxqfl_starts_no_jax():
    from cli_subprocess import assert_fresh_interpreter_prints_ok

    code = ("import sys, jaxqfl; assert 'jax' not in sys.modules, 'import jaxqfl started JAX'; "
            "e = jaxqfl.Experiment.of(rounds=3); assert 'jax' not in sys.modules; "
            "[getattr(jaxqfl, n) for n in jaxqfl.__all__]; print('ok')")
    assert_fresh_interpreter_prints_ok(code)
    with pytest.raises(AttributeError, match="no attribute 'cli_main'"):
        jaxqfl.cli_main


def test_jaxqfl_resume_continues_a_stopped_run_to_the_uninterrupted_model(tmp_path):
    """A run whose last checkpoint and final model are lost (stopped after round 2 of 4) continues from its
    round-2 checkpoint with ``jaxqfl.resume`` to the same final model as the run that was never stopped."""
    import shutil

    exp = Experiment.of(**{**SMALL, "rounds": 4, "checkpoint_every": 2, "eval_every": 2})
    whole = jaxqfl.run(exp, out=tmp_path / "whole")
    stopped = jaxqfl.run(exp, out=tmp_path / "stopped")
    shutil.rmtree(stopped.out / "checkpoints" / "4")
    (stopped.out / "final_params.msgpack").unlink()
    again = jaxqfl.resume(stopped.out)
    assert again.status == 0 and again.summary["rounds"] == 4
    assert (again.out / "final_params.msgpack").read_bytes() == (whole.out / "final_params.msgpack").read_bytes()
    with pytest.raises(ExperimentError, match="no such folder"):
        jaxqfl.resume(tmp_path / "missing")


def test_a_sweep_past_ten_thousand_configs_is_refused_before_anything_is_built(capsys):
    """1,000 seeds x 11 learning rates: refused by the product, naming both counts (100,001 seeds stalled in
    stacking their states, ignoring SIGTERM)."""
    lrs = ",".join(str(0.01 * (i + 1)) for i in range(11))
    with pytest.raises(SystemExit) as e:
        main(["run", "--seeds", "0-999", "--client-lr", lrs, "--print-config"])
    assert e.value.code == 2
    assert "a sweep of 11,000 configs (11 x 1000 seeds); a sweep runs at most 10,000" in capsys.readouterr().err


@pytest.mark.parametrize("name, where", [("out", "jaxqfl.run(experiment, out=...)"),
                                         ("resume", "jaxqfl.resume(folder)"),
                                         ("no_progress", "jaxqfl.run(experiment, progress=False)")])
def test_an_invocation_flag_given_to_the_experiment_says_where_it_goes(name, where):
    """Experiment.of(out=...) answered "did you mean dropout?"."""
    with pytest.raises(InvalidValue, match=re.escape(f"{name!r} belongs to a run, not to the experiment: {where}")):
        Experiment.of(**{name: "x"})


@settings_hypothesis(max_examples=300, deadline=None)
@given_hypothesis(st.text())
def test_any_string_setting_round_trips_through_toml(text):
    """Control characters (\\x01, \\x7f, \\r) were written raw: the file could not be read back ("Illegal character")."""
    import tomllib

    from jaxqfl.experiment.toml_io import to_toml

    assert tomllib.loads(to_toml({"lora-targets": text}))["lora-targets"] == text


def test_files_and_values_a_review_found_misread(tmp_path, capsys):
    """A byte-order mark made a TOML file invalid; [[0.1, 0.2]] became a two-value sweep in Python and '[0.1' on the
    command line; NumPy booleans were refused by switches; dp-bits = 1e3 said "invalid literal for int()"."""
    import numpy as np
    import tomllib

    from jaxqfl.cli.main import main

    bom, nested, bits = tmp_path / "bom.toml", tmp_path / "nested.toml", tmp_path / "bits.toml"
    bom.write_bytes(b"\xef\xbb\xbfrounds = 2\n")
    nested.write_text("client-lr = [[0.1, 0.2]]\n")
    bits.write_text("dp-bits = 1e3\n")
    assert Experiment.from_toml(bom).given() == {"rounds": 2}
    assert main(["run", "--config", str(bom), "--print-config"]) == 0
    assert tomllib.loads(capsys.readouterr().out)["rounds"] == 2
    with pytest.raises(ExperimentError, match="a list of lists is not a setting's value"):
        Experiment.from_toml(nested)
    for path, message in ((nested, "a list of lists is not a setting's value"),
                          (bits, "dp-bits = 1000.0: expected a positive integer")):
        with pytest.raises(SystemExit):
            main(["run", "--config", str(path), "--print-config"])
        assert message in capsys.readouterr().err
    assert Experiment.of(stream=np.bool_(True)).given() == {"stream": True}
