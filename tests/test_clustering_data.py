"""Clustering data and metrics: the federated Gaussian mixture's law; ARI and NMI equal scikit-learn's; inertia."""
import numpy as np
import pytest

from jaxqfl import data, metrics


def test_ari_and_nmi_equal_scikit_learn_on_random_and_edge_labelings():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    cases = [(np.zeros(5, int), np.zeros(5, int)), (np.arange(6), np.arange(6)), (np.zeros(4, int), np.arange(4)),
             (np.array([0]), np.array([3])), (np.array(["a", "b", "a"]), np.array([7, 7, 1]))]
    for _ in range(150):
        n = int(rng.integers(2, 80))
        u = rng.integers(0, rng.integers(1, 7), n)
        v = rng.integers(0, rng.integers(1, 7), n)
        if rng.random() < 0.3:
            v = (u * 3 + 1) % 11  # a renaming of u
        cases.append((u, v))
    for u, v in cases:
        assert metrics.adjusted_rand_index(u, v) == pytest.approx(sk.adjusted_rand_score(u, v), abs=1e-12)
        assert metrics.normalized_mutual_info(u, v) == pytest.approx(sk.normalized_mutual_info_score(u, v), abs=1e-12)
    with pytest.raises(ValueError, match=r"shapes \(3,\) and \(4,\)"):
        metrics.adjusted_rand_index(np.zeros(3), np.zeros(4))


def test_inertia_and_nearest_centroid_equal_a_brute_force_sum():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5000, 3)).astype(np.float32)  # more rows than one chunk of the metric
    c = rng.normal(size=(4, 3))
    d2 = np.array([[np.sum((xi.astype(np.float64) - cj) ** 2) for cj in c] for xi in x[:50]])
    np.testing.assert_array_equal(metrics.nearest_centroid(x[:50], c), d2.argmin(1))
    full = ((x[:, None, :].astype(np.float64) - c[None]) ** 2).sum(-1).min(1).sum()
    assert metrics.inertia(x, c) == pytest.approx(full, rel=1e-12)
    assert metrics.inertia(c, c) == 0.0


def test_mixture_clients_draw_their_components_with_their_weights():
    K, C = 6, 40
    kw = dict(num_features=3, concentration=0.5, separation=5.0, size_mean=0.0, size_sigma=0.0, min_size=399)
    pop = data.gaussian_mixture(K, C, seed=1, test_fraction=0.1, **kw)
    params = data.mixture_parameters(K, C, seed=1, **kw)
    assert pop.task == "clustering" and pop.num_classes == K and pop.x.dtype == np.float32
    np.testing.assert_array_equal(params.sizes, np.full(C, 400))
    # x - mu_z ~ N(0, I): the pooled residual's mean and covariance, within 5 standard errors (16,000 rows)
    residual = np.concatenate([pop.x, pop.x_test]) - params.means[np.concatenate([pop.y, pop.y_test])]
    assert np.all(np.abs(residual.mean(0)) < 5 / np.sqrt(16000))
    assert np.allclose(np.cov(residual, rowvar=False), np.eye(3), atol=5 * np.sqrt(2 / 16000))
    # each client's component frequencies follow its Dirichlet weights (400 draws: s.e. <= 0.025)
    for k in range(C):
        _, y = pop.client(k)
        freq = np.bincount(y, minlength=K) / len(y)
        assert np.all(np.abs(freq - params.weights[k]) < 0.1)


def test_mixture_concentration_controls_how_many_components_a_client_uses():
    def components_used(concentration):
        pop = data.gaussian_mixture(8, 60, seed=0, concentration=concentration, size_mean=0.0, size_sigma=0.0,
                                    min_size=200, num_features=2)
        return np.mean([np.sum(np.bincount(pop.client(k)[1], minlength=8) >= 10) for k in range(60)])

    few, many = components_used(0.05), components_used(50.0)
    assert few < 2.0 and many > 7.5


def test_mixture_validation_names_the_bad_value():
    with pytest.raises(ValueError, match=r"concentration must be a finite number > 0, got 0"):
        data.gaussian_mixture(3, 5, seed=0, concentration=0)
    with pytest.raises(ValueError, match=r"num_components must be an integer >= 1, got 0"):
        data.gaussian_mixture(0, 5, seed=0)


def test_build_relabels_the_mixture_for_classification_and_the_cli_refuses_regression_on_it(capsys):
    pop = data.build("gaussian-mixture", num_clients=5, task="classification", components=3, max_size=60)
    assert pop.task == "classification" and pop.num_classes == 3
    with pytest.raises(ValueError, match=r"task 'regression' needs real targets"):
        data.build("gaussian-mixture", num_clients=5, task="regression")
    from jaxqfl.cli.main import main

    with pytest.raises(SystemExit) as exc:  # clustering runs (tests/test_kmeans_cli.py); regression has no targets
        main(["run", "--dataset", "gaussian-mixture", "--task", "regression", "--no-progress"])
    assert exc.value.code == 2 and "does not fit --dataset gaussian-mixture" in capsys.readouterr().err
