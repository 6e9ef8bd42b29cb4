"""Issue 21, defect 1 and 8: generated populations (and --stream runs) are sized before a row is drawn.

The footprint (``jaxqfl.data.footprint``) must equal the population ``data.build``
then makes, and its expectation must match the size distribution's, computed here
independently with SciPy; the command line must refuse what cannot fit, within
seconds, with exit status 2, without building anything.
"""
import math
import time

import numpy as np
import pytest
from scipy import stats

from jaxqfl import data
from jaxqfl.data import footprint


def _population_bytes(pop):
    return sum(a.nbytes for a in (pop.x, pop.y, pop.x_test, pop.y_test))


@pytest.mark.parametrize("dataset, kw", [
    ("synthetic", dict(size_mean=2.0, size_sigma=1.5, min_size=5)),
    ("synthetic-regression", dict(size_mean=2.0, size_sigma=1.0, min_size=3, num_outputs=2, num_features=7)),
    ("gaussian-mixture", dict(size_mean=3.0, size_sigma=2.0, min_size=10, max_size=60, components=4)),
])
def test_footprint_of_the_flags_is_the_population_build_makes(dataset, kw):
    fp = footprint.generated_footprint(dataset, num_clients=37, seed=3, **kw)
    pop = data.build(dataset, num_clients=37, seed=3, **kw)
    assert fp.exact
    assert (fp.train_rows, fp.test_rows, fp.largest_client) == (pop.num_examples, len(pop.x_test), pop.max_count)
    assert fp.bytes == _population_bytes(pop)
    assert fp == footprint.footprint_of(pop)
    assert fp.cohort_block_bytes(5) == 5 * pop.max_count * (pop.x.shape[1] + fp.target_width) * 4


def _floor_lognormal_mean(mu, sigma, m, cap_rows=None, terms=200_000):
    """E[min(floor(X), c)] + m = m + sum_{j=1}^{c} P(X >= j), X ~ LogNormal(mu, sigma), from SciPy's survival function."""
    j = np.arange(1, (terms if cap_rows is None else cap_rows) + 1, dtype=np.float64)
    return m + float(np.sum(stats.lognorm.sf(j, s=sigma, scale=math.exp(mu))))


@pytest.mark.parametrize("mu, sigma, m, cap", [(4.0, 2.0, 50, 5000), (1.0, 0.5, 3, None), (2.0, 1.0, 5, 40),
                                               (6.0, 0.0, 1, None)])
def test_expected_client_size_is_the_distributions_to_within_the_floor(mu, sigma, m, cap):
    if sigma == 0:
        exact = math.floor(math.exp(mu)) + m
    else:
        exact = _floor_lognormal_mean(mu, sigma, m, None if cap is None else cap - m)
    ours = footprint.expected_client_size(mu, sigma, m, cap)
    assert exact <= ours + 1e-9 and ours < exact + 1.0


def test_client_size_quantile_is_scipys_lognormal_quantile():
    for q in (0.1, 0.5, 0.999):
        want = math.floor(stats.lognorm.ppf(q, s=2.0, scale=math.exp(4.0))) + 50
        assert footprint.client_size_quantile(q, 4.0, 2.0, 50) == want
    assert footprint.client_size_quantile(0.999, 4.0, 2.0, 50, max_size=300) == 300


def test_many_clients_use_the_distribution_close_to_the_drawn_sizes(monkeypatch):
    kw = dict(num_clients=50_000, seed=1, size_mean=3.0, size_sigma=0.5, min_size=20)
    drawn = footprint.generated_footprint("synthetic", **kw)
    monkeypatch.setattr(footprint, "EXACT_CLIENTS", 1000)
    expected = footprint.generated_footprint("synthetic", **kw)
    assert drawn.exact and not expected.exact
    total = lambda f: f.train_rows + f.test_rows  # noqa: E731
    # an upper bound on the mean by less than one row a client (the floor), sampling noise aside
    assert total(drawn) - 0.005 * total(drawn) < total(expected) < total(drawn) + kw["num_clients"]
    assert abs(expected.largest_client - drawn.largest_client) < 0.25 * drawn.largest_client
    # a huge mean stays a finite number (the refusal needs one), no overflow
    huge = footprint.generated_footprint("synthetic", num_clients=10**12, size_mean=1000.0)
    assert huge.bytes > 2**80


# --- the command line -----------------------------------------------------------------------------------------------

GIB = 2**30


@pytest.fixture
def host_24gib(monkeypatch):
    """A 24 GiB host with nothing to build: the refusal must come from the flags alone."""
    import jaxqfl.data
    import jaxqfl.data.population_cache
    from jaxqfl.experiment import memory_guard

    def no_data(*a, **k):
        raise AssertionError("the population was built although the run cannot fit")

    monkeypatch.setattr(memory_guard, "host_available_bytes", lambda: 24 * GIB)
    monkeypatch.setattr(jaxqfl.data, "build", no_data)
    monkeypatch.setattr(jaxqfl.data.population_cache, "cached", no_data)  # nor read back from the population cache


@pytest.mark.parametrize("argv, message", [
    # the million clients of default sizes, streamed: 455M rows; the largest client alone has ~10^6 rows
    (["--num-clients", "1000000", "--cohort-size", "1000", "--rounds", "20", "--stream"], "streamed cohort blocks"),
    (["--client-size-mean", "30"], "EiB"),  # 1.9e17 rows (NumPy tried a 466 PiB array)
    (["--client-size-mean", "10", "--devices", "1"], "--client-size-mean"),  # 25.8 GiB on a 24 GiB host
    (["--dataset", "synthetic-regression", "--num-clients", "100000", "--num-features", "500", "--stream",
      "--max-client-size", "2000"],
     "population on the host"),
    (["--dataset", "gaussian-mixture", "--num-clients", "200000", "--num-features", "1000"], "GiB"),
])
def test_generated_population_too_large_is_refused_in_seconds(host_24gib, tmp_path, capsys, argv, message):
    from jaxqfl.cli.main import main

    out = tmp_path / "out"
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as exc:
        main(["run", "--out", str(out), "--no-progress", *argv])
    assert exc.value.code == 2
    assert time.perf_counter() - t0 < 30  # seconds (JAX's import included), not a build
    err = capsys.readouterr().err
    assert "error: this run needs about" in err and "refused before allocating" in err
    assert message in err and "bytes" in err
    assert not out.exists()


@pytest.mark.parametrize("argv, term, advice", [
    # both failed in XLA's allocator with a traceback (RESOURCE_EXHAUSTED, 44 and 1,227 GB)
    (["--batch-size", "100000000"],
     "one client's local work, at least one per device (a local step's batch of 100,000,000 rows x 61 values",
     "a smaller --batch-size, or fewer --devices"),
    (["--local-epochs", "150000"], "one client's local work, at least one per device (a local step's batch of 10 rows "
     "x 61 values and 150,000 epochs' row orders of 14,025", "fewer --local-epochs, or fewer --devices"),
    # the model, not the population (which the advice named): 10^12 parameters
    (["--model", "mlp", "--hidden", "1000000,1000000"], "cohort blocks (50 clients per device x 16,001,152,000,160",
     "a smaller model (its 1,000,072,000,010 parameters are held 4 times per client of the cohort"),
])
def test_a_term_with_its_own_cause_is_refused_naming_its_flags(host_24gib, tmp_path, capsys, argv, term, advice):
    from jaxqfl.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["run", "--out", str(tmp_path / "out"), "--no-progress", "--devices", "2", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.split("jaxqfl run: error: ")[-1]  # the message, after the usage
    assert f"Dominant term: {term}" in err
    assert f"Try {advice}" in err and "--num-clients" not in err  # not the population's advice


def test_a_population_that_fits_is_not_refused(host_24gib, tmp_path):
    """The default run (1,000 clients, about 0.1 GiB) passes the guard: it reaches the data build."""
    from jaxqfl.cli.main import main

    with pytest.raises(AssertionError, match="population was built"):
        main(["run", "--rounds", "1", "--no-progress", "--out", str(tmp_path / "out")])


def test_an_image_zoo_model_on_mnist_passes_the_guard(host_24gib, tmp_path):
    """The pre-data estimate sizes ResNet-20 on MNIST's [28, 28, 1] images (it once fed it flat rows and crashed)."""
    from conftest import MNIST_PATH

    from jaxqfl.cli.main import main

    with pytest.raises(AssertionError, match="population was built"):
        main(["run", "--dataset", "mnist", "--data-path", str(MNIST_PATH), "--num-clients", "100", "--model",
              "resnet20", "--rounds", "1", "--no-progress", "--out", str(tmp_path / "out")])


@pytest.mark.parametrize("model,hidden", [("logreg", None), ("linear", None), ("mlp", (7, 5))])
def test_the_pre_jax_parameter_count_is_the_models_own(model, hidden):
    """The count the memory check uses before JAX starts equals the built model's (``linear`` was counted as the
    CNN's 1.6M parameters)."""
    import math
    from types import SimpleNamespace

    import jax

    from jaxqfl import models
    from jaxqfl.experiment import memory_guard

    built = {"logreg": lambda: models.logistic_regression(3), "linear": lambda: models.linear_regression(3),
             "mlp": lambda: models.mlp(hidden=hidden, num_outputs=3)}[model]()
    shapes = jax.eval_shape(built.init, jax.random.key(0), jax.ShapeDtypeStruct((2, 11), "float32"))
    actual = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))
    assert memory_guard.model_num_params(SimpleNamespace(model=model, hidden=hidden), 11, 3) == actual


def test_the_memory_check_sizes_the_population_with_its_own_seed():
    from jaxqfl import Experiment
    from jaxqfl.experiment import memory_guard
    from jaxqfl.experiment.resolved import settings_of

    settings = settings_of(Experiment.of(num_clients=50, cohort_size=5, seed=0, data_seed=7))
    built = data.build("synthetic", num_clients=50, seed=7)  # --data-seed 7 draws the rows, not --seed 0
    fp = memory_guard.footprint_from_flags(settings)
    assert fp.exact and fp.train_rows == built.num_examples and fp.test_rows == built.x_test.shape[0]


def test_xla_out_of_memory_is_said_not_a_traceback(monkeypatch, tmp_path, capsys):
    """A run the estimate let start but XLA's allocator refused (here a real RESOURCE_EXHAUSTED: 4 PiB, past any
    address space, so nothing is ever touched) ends with the refusal's message and exit 2; other errors pass."""
    import jax
    import jax.numpy as jnp

    from jaxqfl.cli.main import main
    from jaxqfl.experiment import memory_guard, runner

    def allocate_too_much(*args, **kwargs):
        jax.jit(lambda: jnp.zeros((2**50,), jnp.float32))().block_until_ready()

    monkeypatch.setattr(runner, "_main", allocate_too_much)
    with pytest.raises(SystemExit) as exc:
        main(["run", "--rounds", "1", "--no-progress", "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert ("jaxqfl run: error: out of memory: XLA could not allocate 4.0 PiB (4,503,599,627,370,496 bytes) for this "
            "run") in err and "Try a smaller --batch-size" in err
    assert memory_guard.out_of_memory(ValueError("RESOURCE_EXHAUSTED")) is None  # only XLA's own error is read


def test_quantize_out_of_memory_is_said_not_a_traceback(monkeypatch, capsys):
    import argparse

    import jax
    import jax.numpy as jnp

    from jaxqfl.cli import quantize_command

    def allocate_too_much(args):
        jax.jit(lambda: jnp.zeros((2**50,), jnp.float32))().block_until_ready()

    monkeypatch.setattr(quantize_command, "_quantize", allocate_too_much)
    assert quantize_command.main(argparse.Namespace()) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxqfl quantize: error: out of memory: XLA could not allocate 4.0 PiB")
    assert "this calibration" in err and "Try fewer --calibration-clients or --rows-per-client" in err
