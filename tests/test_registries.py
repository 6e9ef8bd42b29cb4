"""The registries of attacks, datasets and models (``jaxqfl.registry``) drive the choices, tables and resolution.

Properties: each entry is a choice of its flag and the choice lists / tables derive from the entries; each
attack entry builds the behaviour its doc states (checked against the formula: sign flip -u, scaling 10 u,
IPM -0.1 mu, ...), with the entry's default strength; the attack settings follow the entries' properties;
each dataset entry's run defaults are what ``jaxqfl run --print-config --dataset NAME`` resolves; each
model entry builds its model (dense models against their parameter counts) from the size settings it names.
"""
import contextlib
import dataclasses
import io
import tomllib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cli_subprocess import assert_fresh_interpreter_prints_ok

from jaxqfl import choices
from jaxqfl.aggregate import attacks
from jaxqfl.experiment import Experiment, ExperimentError
from jaxqfl.experiment.setting import info_of
from jaxqfl.registry import attacks as attack_registry
from jaxqfl.registry import datasets as dataset_registry


def _choices(dest: str):
    for section in dataclasses.fields(Experiment):
        for f in dataclasses.fields(section.type if isinstance(section.type, type) else
                                    type(getattr(Experiment(), section.name))):
            info = info_of(f)
            if (info.dest or f.name) == dest:
                return info.choices
    raise KeyError(dest)


def test_registries_import_without_jax():
    code = ("import sys; import jaxqfl.choices, jaxqfl.registry.attacks, jaxqfl.registry.datasets, "
            "jaxqfl.registry.models; "
            "assert 'jax' not in sys.modules, sorted(m for m in sys.modules if m.startswith('jax')); print('ok')")
    assert_fresh_interpreter_prints_ok(code)


def test_attack_choices_derive_from_the_entries():
    cli = tuple(e.name for e in attack_registry.ENTRIES if e.cli)
    assert choices.ATTACK_NAMES == cli == tuple(_choices("attack"))
    assert "none" in cli and attack_registry.BY_NAME["none"].build is None
    # by_name knows every entry with a behaviour, the Python-only ones included, and nothing else
    for e in attack_registry.ENTRIES:
        if e.build is None:
            with pytest.raises(ValueError, match=f"unknown attack '{e.name}'"):
                attacks.by_name(e.name)
        else:
            assert attacks.by_name(e.name).name == e.name


U = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.25, -4.0])}
MU = {"w": jnp.array([[0.2, 0.4], [-0.6, 0.8]]), "b": jnp.array([1.0, -1.0])}
SD = {"w": jnp.array([[0.1, 0.2], [0.3, 0.4]]), "b": jnp.array([0.5, 0.6])}
HONEST = attacks.HonestStatistics(MU, SD, jnp.float32(9.0), jnp.float32(3.0))
KEY = jax.random.key(0)


def _sent(attack) -> np.ndarray:
    """What ``attack`` sends for U (one compiled call, not one per eager op)."""
    return _flat(jax.jit(attack.craft)(U, HONEST, KEY))


def _flat(tree):
    return np.concatenate([np.ravel(np.asarray(tree[k], np.float64)) for k in ("b", "w")])


def _mu_unit():
    mu = _flat(MU)
    return mu, mu / np.linalg.norm(mu)


# what each entry's behaviour sends, written from the attack's definition (module docstring / papers)
REFERENCE = {
    "sign-flip": lambda s: -s * _flat(U),
    "scale": lambda s: s * _flat(U),
    "label-flip": lambda s: _flat(U),
    "ipm": lambda s: -s * _flat(MU),
    "alie": lambda s: _flat(MU) - s * _flat(SD),
    "minmax": lambda s: _mu_unit()[0] - s * _mu_unit()[1],
    "minsum": lambda s: _mu_unit()[0] - s * _mu_unit()[1],
}
DEFAULT_SCALE = {"sign-flip": 1.0, "scale": 10.0, "gaussian": 1.0, "ipm": 0.1}  # the attacks' documented defaults


@pytest.mark.parametrize("entry", [e for e in attack_registry.ENTRIES if e.build is not None], ids=lambda e: e.name)
def test_each_attack_entry_builds_its_behaviour(entry):
    assert entry.scale == DEFAULT_SCALE.get(entry.name)
    built = entry.build(None)
    assert built.name == entry.name and built.flips_labels == entry.flips_labels
    default = _sent(attacks.by_name(entry.name)) if entry.scale is not None else None
    if entry.name == "gaussian":  # scale z, z ~ N(0, I): a fixed key, so scale 3 is 3 times scale 1
        np.testing.assert_allclose(_sent(attacks.by_name(entry.name, 3.0)), 3 * default,
                                   rtol=1e-6)
        return
    if entry.scale is not None:  # the entry's default strength is the one the behaviour uses
        np.testing.assert_allclose(default, REFERENCE[entry.name](entry.scale), rtol=1e-6)
    if not entry.flips_labels:  # a given strength is the behaviour's scale (ALIE's z, min-max's gamma)
        got = _sent(attacks.by_name(entry.name, 0.7))
        np.testing.assert_allclose(got, REFERENCE[entry.name](0.7), rtol=1e-5, atol=1e-6)


def test_attack_settings_follow_the_entries():
    """An attack with a behaviour takes --byzantine-fraction / --attack-scale (filled: 0.2 / None); without
    one (none) they do nothing and are refused; an attack that flips labels is refused on regression."""
    from jaxqfl.experiment import runner
    from jaxqfl.experiment.resolved import Refuse, settings_of

    for e in attack_registry.ENTRIES:
        if not e.cli:
            continue
        if e.build is None:
            with pytest.raises(ExperimentError, match=f"does nothing with --attack {e.name}"):
                Experiment.of(attack=e.name, attack_scale=2.0).validate()
            continue
        s = settings_of(Experiment.of(attack=e.name))
        runner.validate(Refuse(), s)
        assert (s.byzantine_fraction, s.attack_scale) == (0.2, None)
        regression = Experiment.of(attack=e.name, dataset="synthetic-regression")
        if e.flips_labels:
            with pytest.raises(ExperimentError, match=f"--attack {e.name} trains malicious clients on flipped"):
                regression.validate()
        else:
            regression.validate()


def test_dataset_choices_and_tables_derive_from_the_entries():
    from jaxqfl.data.build import DATASETS, DEFAULT_TASK, FILE_DATASETS

    assert DATASETS == dataset_registry.NAMES == tuple(_choices("dataset"))
    assert FILE_DATASETS == tuple(e.name for e in dataset_registry.ENTRIES if not e.generated)
    assert DEFAULT_TASK == {e.name: e.task for e in dataset_registry.ENTRIES}
    for e in dataset_registry.ENTRIES:
        d = e.defaults
        assert (d.local_steps is None) != (d.local_epochs is None), e.name  # exactly one measure of local work
        assert d.model in choices.MODELS and (d.num_clients is None or d.cohort_size <= d.num_clients)
        assert e.generated == (e.reads is None) and (e.path_doc != "") == (e.reads is not None)


def _print_config(argv) -> dict:
    from jaxqfl.cli.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["run", "--print-config", *argv]) == 0
    return tomllib.loads(out.getvalue())


@pytest.mark.parametrize("entry", dataset_registry.ENTRIES, ids=lambda e: e.name)
def test_each_dataset_entry_is_what_print_config_resolves(entry, tmp_path):
    """The flags left unset take the entry's values. K-means (a clustering default task) reads no model,
    client lr or, with Lloyd, local work: those are checked once the data is relabelled for classification."""
    (tmp_path / "x.npz").write_bytes(b"")
    argv = ["--dataset", entry.name]
    if entry.reads is not None:
        argv += ["--data-path", str(tmp_path / "x.npz" if entry.reads == "file" else tmp_path)]
    expected = entry.defaults._asdict()
    cfg = _print_config(argv)
    assert cfg.get("task") is None  # left automatic: the entry's task, resolved when the data is built
    if entry.task == "clustering":
        kmeans = {"model", "client_lr", "local_steps", "batch_size"}  # k-means' own (Lloyd: one full batch)
        assert {f: cfg.get(f.replace("_", "-")) for f in expected if f not in kmeans} == {
            f: v for f, v in expected.items() if f not in kmeans}
        cfg = _print_config(argv + ["--task", "classification"])
    assert {f: cfg.get(f.replace("_", "-")) for f in expected} == expected


def test_model_choices_derive_from_the_entries():
    from jaxqfl import saved_run
    from jaxqfl.experiment import model_rules
    from jaxqfl.registry import models as model_registry

    assert choices.MODELS == model_registry.NAMES == tuple(_choices("model"))
    assert choices.ZOO_MODELS == model_rules.ZOO_MODELS == tuple(e.name for e in model_registry.ENTRIES if e.zoo)
    assert model_rules.SEQUENCE_MODELS == tuple(e.name for e in model_registry.ENTRIES if e.tokens)
    assert saved_run.MODELS == tuple(e.name for e in model_registry.ENTRIES if not e.zoo)
    helps = {info_of(f).dest or f.name: info_of(f).help for section in dataclasses.fields(Experiment)
             for f in dataclasses.fields(type(getattr(Experiment(), section.name)))}
    for e in model_registry.ENTRIES:
        for size in e.sizes:  # a setting whose help names the model that reads it
            assert e.name in helps[size], (size, helps[size])


def _count(model, shape):
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1,) + shape, jnp.float32))
    return sum(int(a.size) for a in jax.tree.leaves(shapes))


def test_each_model_entry_builds_its_model():
    """Dense models against their parameter counts (d inputs, k outputs); the zoo's against the
    ``jaxqfl.models`` factory called with the same non-default sizes (a dropped size that changes the count shows)."""
    from types import SimpleNamespace

    from jaxqfl import models
    from jaxqfl.registry import models as model_registry

    s = SimpleNamespace(hidden=(5, 4), resnet_groups=4, embed_dim=3, lstm_hidden=7, lstm_layers=1,
                        transformer_width=12, transformer_depth=1, transformer_heads=3)
    d, k = 6, 3
    cnn = (5 * 5 * 32 + 32) + (5 * 5 * 32 * 64 + 64) + (7 * 7 * 64 * 512 + 512) + (512 * k + k)  # McMahan et al.
    expected = {
        "mlp": ((d,), d * 5 + 5 + 5 * 4 + 4 + 4 * k + k), "logreg": ((d,), d * k + k), "linear": ((d,), d * k + k),
        "cnn": ((28, 28, 1), cnn),
        "resnet20": ((8, 8, 3), _count(models.resnet20(num_outputs=k, groups=4), (8, 8, 3))),
        "lstm": ((10,), _count(models.char_lstm(vocab=k, embed_dim=3, hidden=7, layers=1), (10,))),
        "transformer": ((10,), _count(models.transformer(vocab=k, width=12, depth=1, heads=3, context=10), (10,))),
    }
    assert set(expected) == set(model_registry.NAMES)
    for e in model_registry.ENTRIES:
        shape, count = expected[e.name]
        assert _count(e.build(s, k, shape, None), shape) == count, e.name
        if e.graph is not None:  # its layer graph has one Dense / Conv op per parameter layer
            assert sum(type(op).__name__ in ("Dense", "Conv") for op in e.graph(s)) == {
                "mlp": 3, "cnn": 4}.get(e.name, 1)


def test_attack_scale_is_refused_with_an_attack_that_reads_no_strength(capsys):
    from jaxqfl.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["run", "--attack", "label-flip", "--attack-scale", "2", "--print-config"])
    assert e.value.code == 2 and "--attack-scale does nothing with --attack label-flip" in capsys.readouterr().err
