"""Calibration: ranges equal NumPy on the same rows; federated calibration equals pooled calibration."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxqfl import models, quant
from jaxqfl.engine.mesh import client_mesh
from jaxqfl.models.capture import layer_inputs
from jaxqfl.ptq import federated_calibrate, federated_histograms, federated_minmax
from jaxqfl.quant import calibrate as cal
from tests.populations import classification_population

SIZES = [5, 17, 1, 9, 30, 2, 11, 7, 3, 13, 6]  # 11 uneven clients


@pytest.fixture(scope="module")
def setup():
    pop = classification_population(SIZES, num_features=6, num_classes=3)
    model = models.mlp(hidden=(16, 8), num_outputs=3)
    params = model.init(jax.random.key(0), pop.x[:1])
    return pop, model, params


def numpy_inputs(params, x):
    """Layer inputs of the MLP, computed in NumPy."""
    h = np.asarray(x, np.float64)
    out = {}
    for i in range(3):
        out[f"Dense_{i}"] = h
        w, b = (np.asarray(params[f"Dense_{i}"][k], np.float64) for k in ("kernel", "bias"))
        h = h @ w + b
        if i < 2:
            h = np.maximum(h, 0)
    return out


def numpy_percentile_range(x, lo, hi, bins, p):
    edges = lo + (hi - lo) * np.arange(bins + 1) / bins
    idx = np.clip(np.floor((x - lo) / (hi - lo) * bins), 0, bins - 1).astype(int)
    cdf = np.cumsum(np.bincount(idx.ravel(), minlength=bins))
    i_hi = np.argmax(cdf >= cdf[-1] * p / 100)
    i_lo = np.argmax(cdf >= cdf[-1] * (100 - p) / 100)
    return edges[i_lo], edges[i_hi + 1], edges


def numpy_mse_range(x, lo, hi, bins, bits, k=100):
    edges = lo + (hi - lo) * np.arange(bins + 1) / bins
    idx = np.clip(np.floor((x - lo) / (hi - lo) * bins), 0, bins - 1).astype(int)
    n = np.bincount(idx.ravel(), minlength=bins)
    c = 0.5 * (edges[1:] + edges[:-1])
    best = None
    for a in np.arange(1, k + 1) / k:
        s, z = quant.calibrate.grid_of_range(a * lo, a * hi, bits)
        s, z = float(s), float(z)
        fq = (np.clip(np.floor(c / s + 0.5) + z, 0, 2**bits - 1) - z) * s
        err = np.sum(n * (c - fq) ** 2)
        if best is None or err < best[0]:
            best = (err, a * min(lo, 0), a * max(hi, 0))
    return best[1], best[2]


@pytest.mark.slow
def test_ranges_equal_numpy_on_the_same_rows(setup):
    pop, model, params = setup
    x = pop.x
    ref = numpy_inputs(params, x)
    got = layer_inputs(model, params, jnp.asarray(x))
    assert set(got) == set(ref)
    bins = 64
    for layer, xr in ref.items():
        xg = np.asarray(got[layer])
        np.testing.assert_allclose(xg, xr, rtol=1e-5, atol=1e-5)
        lo, hi = cal.calibrate({layer: got[layer]}, "minmax")[layer]
        assert float(lo) == xg.min() and float(hi) == xg.max()
        lo_c, hi_c = cal.calibrate({layer: got[layer]}, "minmax", per_channel=True)[layer]
        np.testing.assert_array_equal(np.asarray(lo_c), xg.min(0))
        np.testing.assert_array_equal(np.asarray(hi_c), xg.max(0))
        plo, phi = cal.calibrate({layer: got[layer]}, "percentile", bins=bins, percentile=99.0)[layer]
        nlo, nhi, edges = numpy_percentile_range(xg, xg.min(), xg.max(), bins, 99.0)
        np.testing.assert_allclose([float(plo), float(phi)], [nlo, nhi], rtol=1e-6, atol=1e-6)
        width = edges[1] - edges[0]  # within one bin of NumPy's exact percentile
        assert abs(float(phi) - np.percentile(xg, 99.0)) <= width * 1.0001 + 1e-6
        mlo, mhi = cal.calibrate({layer: got[layer]}, "mse", bins=bins, bits=4)[layer]
        rlo, rhi = numpy_mse_range(xg, float(xg.min()), float(xg.max()), bins, 4)
        np.testing.assert_allclose([min(float(mlo), 0), max(float(mhi), 0)], [rlo, rhi], rtol=1e-5, atol=1e-6)


def test_mse_range_clips_outliers():
    x = jnp.concatenate([jnp.linspace(-1, 1, 10000), jnp.array([50.0])])[:, None]
    lo, hi = cal.calibrate({"a": x}, "mse", bits=4)["a"]
    assert float(hi) < 25.0  # clipping the lone outlier wins over covering it
    lo_m, hi_m = cal.calibrate({"a": x}, "minmax")["a"]
    assert float(hi_m) == 50.0


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_federated_calibration_equals_pooled(setup, method):
    pop, model, params = setup
    mesh = client_mesh(8)
    fed = federated_calibrate(model, params, pop, method, bins=128, mesh=mesh, chunk_size=2, per_channel=method == "minmax")
    pooled = cal.calibrate(layer_inputs(model, params, jnp.asarray(pop.x)), method, bins=128,
                           per_channel=method == "minmax")
    for layer in pooled:
        np.testing.assert_array_equal(np.asarray(fed[layer][0]), np.asarray(pooled[layer][0]))
        np.testing.assert_array_equal(np.asarray(fed[layer][1]), np.asarray(pooled[layer][1]))


def test_more_rows_per_client_than_any_client_holds_calibrates_on_all_rows(setup):
    """``rows_per_client`` past the largest client reads every row, as the pooled calibration (2**31 - 1 once padded
    every client to it and asked XLA for terabytes)."""
    pop, model, params = setup
    fed = federated_calibrate(model, params, pop, "minmax", mesh=client_mesh(2), chunk_size=2,
                              rows_per_client=2**31 - 1)
    pooled = cal.calibrate(layer_inputs(model, params, jnp.asarray(pop.x)), "minmax")
    for layer in pooled:
        np.testing.assert_array_equal(np.asarray(fed[layer][0]), np.asarray(pooled[layer][0]))
        np.testing.assert_array_equal(np.asarray(fed[layer][1]), np.asarray(pooled[layer][1]))


def test_federated_statistics_of_a_cohort_equal_its_rows(setup):
    pop, model, params = setup
    ids = np.array([4, 1, 9])
    mm = federated_minmax(model, params, pop, client_ids=ids, mesh=client_mesh(2), chunk_size=1)
    h = federated_histograms(model, params, pop, mm, bins=32, client_ids=ids, mesh=client_mesh(2), chunk_size=1)
    rows = np.concatenate([pop.client(int(i))[0] for i in ids])
    ref = numpy_inputs(params, rows)
    for layer, xr in ref.items():
        np.testing.assert_allclose(float(mm[layer].lo), xr.min(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(float(mm[layer].hi), xr.max(), rtol=1e-5, atol=1e-6)
        assert float(h[layer].counts.sum()) == xr.size


@pytest.mark.parametrize("kwargs, message", [
    (dict(rows_per_client=0), "rows_per_client must be a positive integer"),
    (dict(rows_per_client=-5), "rows_per_client must be a positive integer"),
    (dict(chunk_size=0), "chunk_size must be a positive integer"),
    (dict(method="mse", bits=0), r"bits must be an integer in \[1, 32\]"),
    (dict(method="percentile", bins=0), r"bins must be an integer in \[2, "),
    (dict(method="percentile", percentile=200), r"percentile must be a number in \(0, 100\]"),
    (dict(method="percentile", percentile=float("nan")), r"percentile must be a number in \(0, 100\]"),
    (dict(client_ids=[0.5, 1.7]), "client_ids must be integers"),
])
def test_bad_calibration_arguments_are_refused_by_name(setup, kwargs, message):
    """Each was a ZeroDivisionError, an empty argmax, a degenerate range or clients 0 and 1 in silence."""
    pop, model, params = setup
    kwargs = {"method": "minmax", **kwargs}
    with pytest.raises(ValueError, match=message):
        federated_calibrate(model, params, pop, kwargs.pop("method"), mesh=client_mesh(2), **kwargs)


def test_non_finite_params_are_refused_naming_the_layer(setup):
    pop, model, params = setup
    broken = jax.tree.map(lambda a: a * jnp.nan, params)
    with pytest.raises(ValueError, match="hold NaN or Inf"):
        federated_calibrate(model, broken, pop, "minmax", mesh=client_mesh(2))
    with pytest.raises(ValueError, match="hold NaN or Inf"):
        cal.calibrate({"a": jnp.array([[1.0], [jnp.nan]])}, "minmax")
