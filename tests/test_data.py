"""Tests of jaxqfl.data: each test states a property that wrong code would break."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxqfl.data import (
    DATASETS,
    PARTITIONS,
    Population,
    build,
    from_client_indices,
    load_mnist,
    partition,
    synthetic,
    synthetic_parameters,
)
from jaxqfl.data.synthetic import feature_variance

# Official MNIST test split (10,000 images): examples per digit 0..9.
MNIST_TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def balanced_labels(num_classes=10, per_class=400, seed=0):
    """``num_classes * per_class`` labels, shuffled."""
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(num_classes), per_class))


PARTITIONERS = {
    "iid": lambda y, c, s: partition.iid(y, c, s),
    "dirichlet": lambda y, c, s: partition.dirichlet(y, c, 0.3, s),
    "shards": lambda y, c, s: partition.shards(y, c, 2, seed=s),
    "quantity": lambda y, c, s: partition.quantity(y, c, 1.0, s),
}


def label_entropy(labels, parts, num_classes):
    """Mean over clients of the entropy (nats) of the client's label distribution."""
    out = []
    for p in parts:
        freq = np.bincount(labels[p], minlength=num_classes) / len(p)
        nz = freq[freq > 0]
        out.append(-(nz * np.log(nz)).sum())
    return float(np.mean(out))


# --------------------------------------------------------------------------- partitions: shared properties


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
@pytest.mark.parametrize("num_clients", [1, 7, 100])
def test_partition_is_disjoint_cover_with_nonempty_sorted_clients(name, num_clients):
    # Unbalanced labels, N not divisible by the client count.
    labels = np.random.default_rng(1).choice(10, size=1003, p=np.linspace(1, 3, 10) / 20)
    parts = PARTITIONERS[name](labels, num_clients, 0)
    assert len(parts) == num_clients
    assert all(p.dtype == np.int64 and p.ndim == 1 and p.size >= 1 for p in parts)
    assert all(np.all(np.diff(p) > 0) for p in parts)  # ascending, hence no repeats inside a client
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(labels.size))


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
def test_partition_is_a_function_of_the_seed(name):
    labels = balanced_labels()
    a, b, c = (PARTITIONERS[name](labels, 20, s) for s in (3, 3, 4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_iid_sizes_differ_by_at_most_one_and_labels_stay_mixed():
    labels = balanced_labels()
    parts = partition.iid(labels, 30, seed=0)
    sizes = np.array([p.size for p in parts])
    assert sizes.max() - sizes.min() <= 1
    # 133 rows from a 10-class uniform mix: entropy near log(10) for every client.
    assert label_entropy(labels, parts, 10) > 0.9 * math.log(10)


def test_dirichlet_concentrates_labels_as_alpha_falls():
    labels = balanced_labels()
    alphas = [100.0, 1.0, 0.05]
    entropy = [label_entropy(labels, partition.dirichlet(labels, 20, a, seed=0), 10) for a in alphas]
    max_share = [
        np.mean([np.bincount(labels[p], minlength=10).max() / p.size for p in partition.dirichlet(labels, 20, a, 0)])
        for a in alphas
    ]
    assert entropy[0] > entropy[1] > entropy[2]
    assert max_share[0] < max_share[1] < max_share[2]
    assert entropy[0] > 0.95 * math.log(10)  # alpha -> infinity is IID
    assert max_share[2] > 0.7  # alpha -> 0: a client is mostly one class


def test_dirichlet_class_sizes_follow_the_drawn_shares():
    # A class's rows are split, not duplicated or moved across classes: per-class totals are kept.
    labels = balanced_labels(num_classes=5, per_class=300)
    parts = partition.dirichlet(labels, 8, 0.5, seed=2)
    per_client = np.stack([np.bincount(labels[p], minlength=5) for p in parts])  # [C, K]
    np.testing.assert_array_equal(per_client.sum(axis=0), np.bincount(labels))


def test_dirichlet_honours_min_size_and_num_classes():
    labels = balanced_labels(num_classes=4, per_class=250)
    parts = partition.dirichlet(labels, 10, 0.2, seed=0, num_classes=12, min_size=40)
    assert min(p.size for p in parts) >= 40


def test_dirichlet_gives_up_with_a_clear_error_when_min_size_is_unreachable():
    # alpha -> 0 gives each of 10 classes to about one client: 50 clients can never all be served.
    labels = balanced_labels(num_classes=10, per_class=20)
    with pytest.raises(ValueError, match=r"alpha=0\.001.*min_size=1.*5 draws"):
        partition.dirichlet(labels, 50, 1e-3, seed=0, max_tries=5)


@pytest.mark.parametrize("seed", range(5))
def test_shards_give_each_client_k_distinct_labels_mnist_like(seed):
    # The McMahan et al. setting: 100 clients x 2 shards on 10 balanced labels (20 pure shards per label).
    labels = balanced_labels(num_classes=10, per_class=60, seed=seed)
    parts = partition.shards(labels, 100, 2, seed=seed)
    assert all(p.size == 6 for p in parts)
    assert all(np.unique(labels[p]).size == 2 for p in parts)


def test_shards_pairings_are_random_not_a_fixed_pattern():
    labels = balanced_labels(num_classes=10, per_class=60)
    pairs = set()
    for seed in range(5):
        for p in partition.shards(labels, 100, 2, seed=seed):
            pairs.add(tuple(np.unique(labels[p])))
    assert len(pairs) > 30  # of the 45 possible label pairs


@pytest.mark.parametrize("seed", range(20))
def test_shards_distinct_even_when_groups_are_tight(seed):
    # 10 clients x 3 shards of 2 rows: labels 0 and 1 have 10 shards each, i.e. one per client,
    # so every client must take both; a uniformly random deal almost never achieves that.
    labels = np.repeat([0, 1, 2, 3], [20, 20, 10, 10])
    parts = partition.shards(labels, 10, 3, seed=seed)
    for p in parts:
        got = np.unique(labels[p])
        assert got.size == 3 and {0, 1} <= set(got.tolist())


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_shards_distinct_whenever_feasible(data):
    # Every feasible multiset of label groups is k distinct groups per client for some deal:
    # generate one such deal, hide it, and ask the partitioner to find one.
    num_clients = data.draw(st.integers(1, 12), label="num_clients")
    k = data.draw(st.integers(1, 4), label="k")
    num_groups = data.draw(st.integers(k, 7), label="num_groups")
    shard_size = data.draw(st.integers(1, 3), label="shard_size")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    rng = np.random.default_rng(seed)
    groups = np.concatenate([rng.choice(num_groups, size=k, replace=False) for _ in range(num_clients)])
    labels = rng.permutation(np.repeat(np.sort(groups), shard_size))
    parts = partition.shards(labels, num_clients, k, seed=seed)
    assert all(np.unique(labels[p]).size == k for p in parts)
    assert all(p.size == k * shard_size for p in parts)


def test_shards_infeasible_still_deals_k_shards_each():
    labels = np.zeros(40, dtype=int)  # one label: distinct groups impossible
    parts = partition.shards(labels, 5, 2, seed=0)
    assert [p.size for p in parts] == [8] * 5


def test_shards_real_mnist_labels_give_two_majority_groups(mnist_data):
    # Real, unbalanced label counts: shards straddle label boundaries, but no client's two
    # shards share a majority label, so every client sees at least two labels.
    _, y, _, _ = mnist_data
    parts = partition.shards(y, 100, 2, seed=0)
    assert all(np.unique(y[p]).size >= 2 for p in parts)
    sizes = np.array([p.size for p in parts])
    assert sizes.max() - sizes.min() <= 2


def test_quantity_size_spread_grows_with_sigma():
    labels = balanced_labels()
    cv = []
    for sigma in (0.0, 0.5, 1.5):
        sizes = np.array([p.size for p in partition.quantity(labels, 50, sigma, seed=0)])
        assert sizes.sum() == labels.size and sizes.min() >= 1
        cv.append(sizes.std() / sizes.mean())
    assert cv[0] < cv[1] < cv[2]
    assert cv[0] < 0.01  # sigma = 0: equal sizes (up to one row)


def test_quantity_extreme_sigma_keeps_every_client_nonempty():
    parts = partition.quantity(np.zeros(100), 100, 50.0, seed=0)
    assert [p.size for p in parts] == [1] * 100


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: partition.iid([], 2, 0), r"empty"),
        (lambda: partition.iid(np.zeros((4, 2)), 2, 0), r"1-D.*\(4, 2\)"),
        (lambda: partition.iid(np.zeros(5), 0, 0), r"num_clients.*>= 1.*got 0"),
        (lambda: partition.iid(np.zeros(5), 2.5, 0), r"num_clients.*got 2\.5"),
        (lambda: partition.iid(np.zeros(5), 6, 0), r"num_clients=6.*5 examples"),
        (lambda: partition.dirichlet(np.zeros(5, int), 2, 0.0, 0), r"alpha.*> 0.*got 0\.0"),
        (lambda: partition.dirichlet(np.zeros(5, int), 2, -1, 0), r"alpha.*got -1"),
        (lambda: partition.dirichlet(np.zeros(5, int), 2, float("nan"), 0), r"alpha.*finite.*nan"),
        (lambda: partition.dirichlet(np.zeros(5, int), 2, float("inf"), 0), r"alpha.*finite.*inf"),
        (lambda: partition.dirichlet(np.zeros(5, int), 7, 1.0, 0), r"num_clients=7"),
        (lambda: partition.dirichlet(np.zeros(5, int), 2, 1.0, 0, min_size=0), r"min_size.*got 0"),
        (lambda: partition.dirichlet(np.zeros(5, int), 2, 1.0, 0, min_size=3), r"min_size=3.*6 rows.*only 5"),
        (lambda: partition.dirichlet([0, 1, 5], 2, 1.0, 0, num_classes=3), r"num_classes=3.*label 5"),
        (lambda: partition.dirichlet([0, -1, 1], 2, 1.0, 0), r">= 0.*-1"),
        (lambda: partition.dirichlet([0, 1.5, 1], 2, 1.0, 0), r"integer.*1\.5"),
        (lambda: partition.shards(np.zeros(10, int), 2, 0, seed=0), r"shards_per_client.*>= 1.*got 0"),
        (lambda: partition.shards(np.zeros(10, int), 4, 3, seed=0), r"shards_per_client=3.*12 shards.*10 rows"),
        (lambda: partition.shards([], 1, 1, seed=0), r"empty"),
        (lambda: partition.quantity(np.zeros(10), 2, -0.5, 0), r"sigma.*>= 0.*-0\.5"),
        (lambda: partition.quantity(np.zeros(10), 2, float("nan"), 0), r"sigma.*nan"),
        (lambda: partition.quantity(np.zeros(10), 11, 1.0, 0), r"num_clients=11"),
    ],
)
def test_partition_validation_names_the_bad_value(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------- population


def test_from_client_indices_lays_clients_out_contiguously():
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    y = np.array([0, 1, 2, 0, 1, 2])
    idx = [np.array([5, 0]), np.array([3]), np.array([1, 2, 4])]
    pop = from_client_indices(x, y, idx, x[:2], y[:2], num_classes=3)
    np.testing.assert_array_equal(pop.offsets, [0, 2, 3])
    np.testing.assert_array_equal(pop.counts, [2, 1, 3])
    for i, ix in enumerate(idx):
        cx, cy = pop.client(i)
        np.testing.assert_array_equal(cx, x[ix])
        np.testing.assert_array_equal(cy, y[ix])
    np.testing.assert_array_equal(pop.client_ids_of_rows(), [0, 0, 1, 2, 2, 2])


def test_population_stores_numpy_arrays_given_lists():
    pop = Population(x=[[0.0], [1.0]], y=[0, 1], offsets=[0], counts=[2], x_test=[[0.5]], y_test=[1], num_classes=2)
    assert isinstance(pop.x, np.ndarray) and pop.feature_shape == (1,) and pop.max_count == 2


def _pop(**changes):
    fields = dict(
        x=np.zeros((4, 2), np.float32),
        y=np.array([0, 1, 1, 0], np.int32),
        offsets=np.array([0, 1], np.int32),
        counts=np.array([1, 3], np.int32),
        x_test=np.zeros((2, 2), np.float32),
        y_test=np.array([0, 1], np.int32),
        num_classes=2,
    )
    fields.update(changes)
    return Population(**fields)


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(num_classes=-1), r"num_classes.*got -1"),
        (dict(x=np.zeros((0, 2)), y=np.zeros(0)), r"empty.*\(0, 2\)"),
        (dict(y=np.zeros(3, np.int32)), r"\(3,\).*4 rows"),
        (dict(x_test=np.zeros((0, 2)), y_test=np.zeros(0)), r"test set is empty.*\(0, 2\)"),
        (dict(y_test=np.zeros(3, np.int32)), r"y_test.*\(3,\).*2 rows"),
        (dict(x_test=np.zeros((2, 3))), r"\(3,\).*\(2,\)"),
        (dict(offsets=np.array([0]), counts=np.array([4])[:0]), r"offsets \(1,\).*counts \(0,\)"),
        (dict(offsets=np.zeros(0, np.int32), counts=np.zeros(0, np.int32)), r"no clients.*\(0,\)"),
        (dict(counts=np.array([0, 4])), r"client 0 has 0 examples"),
        (dict(counts=np.array([2, 3])), r"counts sum to 5.*4 rows"),
        (dict(offsets=np.array([0, 2])), r"offsets\[1\] is 2.*gives 1"),
        (dict(x=np.array([[0, 1], [np.nan, 0], [0, 0], [0, 0]])), r"x holds 1 NaN"),
        (dict(y=np.array([0, 1, 2, 0])), r"labels in \[0, 2\].*\[0, 2\)"),
        (dict(y_test=np.array([-1, 0])), r"y_test.*-1"),
        (dict(y=np.array([0.0, 0.5, 1.0, 0.0])), r"non-integer value 0\.5 at index 1"),
    ],
)
def test_population_validation_names_the_bad_value(changes, match):
    with pytest.raises(ValueError, match=match):
        _pop(**changes)


@pytest.mark.parametrize(
    "idx, match",
    [([], r"empty"), ([np.array([0]), np.array([], int)], r"client 1 has no examples"), ([np.array([0, 9])], r"\[0, 9\]")],
)
def test_from_client_indices_validation_names_the_bad_value(idx, match):
    x, y = np.zeros((4, 1)), np.zeros(4, int)
    with pytest.raises(ValueError, match=match):
        from_client_indices(x, y, idx, x, y, num_classes=1)


# --------------------------------------------------------------------------- synthetic


def test_synthetic_labels_are_the_argmax_of_each_clients_own_model():
    kw = dict(num_features=12, num_classes=5, min_size=20, size_sigma=1.0, size_mean=3.0)
    pop = synthetic(1.0, 1.0, 6, seed=3, **kw)
    params = synthetic_parameters(1.0, 1.0, 6, seed=3, **kw)
    agree_with_other_model = []
    for k in range(6):
        x, y = pop.client(k)
        np.testing.assert_array_equal(y, np.argmax(x.astype(np.float64) @ params.weights[k] + params.biases[k], 1))
        other = (k + 1) % 6
        agree_with_other_model.append(np.mean(y == np.argmax(x @ params.weights[other] + params.biases[other], 1)))
    assert np.mean(agree_with_other_model) < 0.7  # the models really are per client


def test_synthetic_features_have_the_client_mean_and_diagonal_covariance():
    # One client with n = 20001 examples (size_sigma = 0: n = floor(e^0) + min_size).
    n, d = 20001, 60
    kw = dict(size_mean=0.0, size_sigma=0.0, min_size=20000)
    pop = synthetic(0.5, 0.5, 2, seed=0, test_fraction=0.01, **kw)
    params = synthetic_parameters(0.5, 0.5, 2, seed=0, **kw)
    np.testing.assert_array_equal(params.sizes, [n, n])
    var = feature_variance(d)
    np.testing.assert_allclose(var, np.arange(1, d + 1) ** -1.2)
    x = np.concatenate([pop.client(0)[0], pop.x_test[: n - pop.counts[0]]]).astype(np.float64)
    assert x.shape == (n, d)
    # Mean: within 5 standard errors of v_k in every coordinate, and not the other client's v.
    se = np.sqrt(var / n)
    assert np.all(np.abs(x.mean(0) - params.feature_means[0]) < 5 * se)
    assert np.any(np.abs(x.mean(0) - params.feature_means[1]) > 5 * se)
    # Covariance: diagonal within 6 standard errors (relative s.e. sqrt(2/n)), off-diagonal near 0.
    cov = np.cov(x, rowvar=False)
    assert np.all(np.abs(np.diag(cov) / var - 1) < 6 * math.sqrt(2 / n))
    off = cov - np.diag(np.diag(cov))
    assert np.all(np.abs(off) < 6 * np.sqrt(np.outer(var, var) / n))


def test_synthetic_alpha_and_beta_are_standard_deviations_of_the_client_centres():
    # Per-client mean of W_k's 600 entries ~ N(u_k, 1/600) with u_k ~ N(0, alpha): std ~ alpha.
    # Likewise the mean of v_k's 60 entries has std sqrt(beta^2 + 1/60).
    alpha, beta, k = 0.25, 2.0, 2000
    params = synthetic_parameters(alpha, beta, k, seed=0)
    assert params.weights.shape == (k, 60, 10) and params.biases.shape == (k, 10)
    assert abs(params.weights.mean(axis=(1, 2)).std() - math.sqrt(alpha**2 + 1 / 600)) < 0.02
    assert abs(params.feature_means.mean(axis=1).std() - math.sqrt(beta**2 + 1 / 60)) < 0.1
    assert abs(params.weights.std(axis=(1, 2)).mean() - 1.0) < 0.02  # entries ~ N(u_k, 1)
    # b_k shares W_k's centre u_k: corr(mean W_k, mean b_k) = a^2 / sqrt((a^2 + 1/600)(a^2 + 1/10)) = 0.61.
    expected = alpha**2 / math.sqrt((alpha**2 + 1 / 600) * (alpha**2 + 1 / 10))
    assert abs(np.corrcoef(params.weights.mean(axis=(1, 2)), params.biases.mean(axis=1))[0, 1] - expected) < 0.05


def test_synthetic_sizes_follow_leafs_rule_and_the_cap():
    kw = dict(size_mean=4.0, size_sigma=2.0, min_size=50)
    sizes = synthetic_parameters(1, 1, 5000, seed=0, **kw).sizes
    assert sizes.min() >= 50
    # floor(LogNormal(4, 2)) + 50: the median is floor(e^4) + 50 (about 104), up to sampling error.
    assert abs(np.median(sizes) - (math.exp(4) + 50)) < 5
    capped = synthetic_parameters(1, 1, 5000, seed=0, max_size=300, **kw).sizes
    np.testing.assert_array_equal(capped, np.minimum(sizes, 300))


def test_synthetic_train_test_split_per_client():
    params = synthetic_parameters(1, 1, 20, seed=5)
    pop = synthetic(1, 1, 20, seed=5, test_fraction=0.2)
    n_test = np.floor(0.2 * params.sizes).astype(int)
    np.testing.assert_array_equal(pop.counts, params.sizes - n_test)
    assert pop.x_test.shape == (n_test.sum(), 60)
    assert pop.x.dtype == np.float32 and pop.y.dtype == np.int32 and pop.num_classes == 10
    assert pop.name == "synthetic(1,1)"


def test_synthetic_iid_shares_one_model_and_one_feature_distribution():
    params = synthetic_parameters(3.0, 3.0, 4, seed=0, iid=True)
    assert np.all(params.weights == params.weights[0]) and np.all(params.biases == params.biases[0])
    assert np.all(params.feature_means == 0)
    assert synthetic(3.0, 3.0, 4, seed=0, iid=True).name == "synthetic_iid"


def test_synthetic_is_a_function_of_the_seed():
    a, b, c = synthetic(1, 1, 5, seed=1), synthetic(1, 1, 5, seed=1), synthetic(1, 1, 5, seed=2)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert a.x.shape != c.x.shape or not np.array_equal(a.x, c.x)


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(alpha=-0.1), r"alpha.*>= 0.*-0\.1"),
        (dict(beta=-1.0), r"beta.*>= 0.*-1\.0"),
        (dict(alpha=float("nan")), r"alpha.*finite.*nan"),
        (dict(num_clients=0), r"num_clients.*>= 1.*got 0"),
        (dict(num_features=0), r"num_features.*got 0"),
        (dict(num_classes=1), r"num_classes.*>= 2.*got 1"),
        (dict(size_sigma=-2.0), r"size_sigma.*-2\.0"),
        (dict(size_mean=float("inf")), r"size_mean.*inf"),
        (dict(min_size=0), r"min_size.*got 0"),
        (dict(max_size=10), r"max_size.*min_size=50.*got 10"),
        (dict(test_fraction=0.0), r"test_fraction.*\(0, 1\).*0\.0"),
        (dict(test_fraction=1.0), r"test_fraction.*1\.0"),
        (dict(test_fraction=0.001), r"test_fraction=0\.001 holds out no example"),
    ],
)
def test_synthetic_validation_names_the_bad_value(changes, match):
    args = dict(alpha=1.0, beta=1.0, num_clients=3, seed=0, size_sigma=0.0, size_mean=0.0)
    args.update(changes)
    with pytest.raises(ValueError, match=match):
        synthetic(**args)


# --------------------------------------------------------------------------- MNIST


@pytest.fixture(scope="module")
def mnist_data(mnist_path):
    return load_mnist(mnist_path)


def test_load_mnist_reads_the_real_file(mnist_data):
    x_train, y_train, x_test, y_test = mnist_data
    assert x_train.shape == (24345, 28, 28, 1) and x_test.shape == (10000, 28, 28, 1)
    assert x_train.dtype == x_test.dtype == np.float32
    assert y_train.dtype == y_test.dtype == np.int32
    assert x_train.min() == 0.0 and x_train.max() == 1.0 and x_test.max() == 1.0
    assert 0.12 < x_test.mean() < 0.14  # MNIST's well-known mean intensity, about 0.13
    assert np.bincount(y_test, minlength=10).tolist() == MNIST_TEST_CLASS_COUNTS
    train_counts = np.bincount(y_train, minlength=10)
    assert train_counts.size == 10 and train_counts.min() > 2000


def write_npz(path, **arrays):
    base = dict(
        x_train=np.arange(3 * 784, dtype=np.int64).reshape(3, 28, 28).astype(np.uint8),
        y_train=np.array([3, 0, 9], np.uint8),
        x_test=np.full((2, 28, 28), 255, np.uint8),
        y_test=np.array([1, 2], np.uint8),
    )
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


def test_load_mnist_scales_pixels_and_keeps_labels(tmp_path):
    path = write_npz(tmp_path / "m.npz")
    raw = np.load(path)
    x_train, y_train, x_test, y_test = load_mnist(path)
    np.testing.assert_array_equal(x_train[..., 0], raw["x_train"].astype(np.float32) / 255)
    np.testing.assert_array_equal(y_train, [3, 0, 9])
    assert np.all(x_test == 1.0) and y_test.tolist() == [1, 2]
    # A trailing channel axis is accepted too.
    path4 = write_npz(tmp_path / "m4.npz", x_test=np.zeros((2, 28, 28, 1), np.uint8))
    assert load_mnist(str(path4))[2].shape == (2, 28, 28, 1)


def test_load_mnist_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_mnist(tmp_path / "nope.npz")


def _text_file(tmp_path):
    p = tmp_path / "bad.npz"
    p.write_text("not an archive")
    return p


def _npy_file(tmp_path):
    p = tmp_path / "one.npy"
    np.save(p, np.zeros(3))
    return p


def _truncated(tmp_path):
    p = write_npz(tmp_path / "t.npz")
    p.write_bytes(p.read_bytes()[:200])
    return p


@pytest.mark.parametrize(
    "make, match",
    [
        (_text_file, r"bad\.npz.*is not an \.npz archive \(a zip of \.npy arrays, as numpy\.savez writes\)"),
        (_npy_file, r"one\.npy.*not an \.npz"),
        (_truncated, r"t\.npz"),
        (lambda t: t, r"directory"),
        (lambda t: write_npz(t / "m.npz", y_test=None), r"lacks the key.*y_test"),
        (lambda t: write_npz(t / "m.npz", x_train=np.zeros((3, 28, 27), np.uint8)), r"x_train.*\(3, 28, 27\)"),
        (lambda t: write_npz(t / "m.npz", x_test=np.zeros((2, 28, 28), np.float32)), r"x_test.*float32.*uint8"),
        (lambda t: write_npz(t / "m.npz", y_train=np.array([0.0, 1.0, 2.0])), r"y_train.*float64"),
        (lambda t: write_npz(t / "m.npz", y_train=np.array([0, 1], np.uint8)), r"y_train.*\(2,\).*3 images"),
        (lambda t: write_npz(t / "m.npz", y_test=np.array([1, 10], np.uint8)), r"label 10 at index 1"),
    ],
)
def test_load_mnist_rejects_malformed_files(tmp_path, make, match):
    with pytest.raises(ValueError, match=match):
        load_mnist(make(tmp_path))


@pytest.mark.parametrize("make, match", [
    (_text_file, r"bad\.npz.*is not an \.npz archive \(a zip of \.npy arrays"),
    (_npy_file, r"one\.npy.*not an \.npz"),
    (_truncated, r"t\.npz"),
    (lambda t: write_npz(t / "m.npz", x_test=None), r"lacks the key.*x_test"),
])
def test_the_cli_refuses_an_unreadable_mnist_file_by_name_and_leaves_no_folder(tmp_path, capsys, make, match):
    """The memory check sizes MNIST from the file's headers before the loader runs: a file it cannot read is
    the loader's to refuse (exit 2, the file named), and the refused run's folder is not left behind."""
    import re

    from jaxqfl.cli.main import main

    path = make(tmp_path)
    made, kept = tmp_path / "made" / "run", tmp_path / "kept"
    kept.mkdir()
    for out in (made, kept):
        with pytest.raises(SystemExit) as exc:
            main(["run", "--dataset", "mnist", "--data-path", str(path), "--num-clients", "2", "--cohort-size", "2",
                  "--rounds", "1",
                  "--out", str(out), "--no-progress"])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and re.search(match, err) and "Traceback" not in err and "pickle" not in err, err
    assert not made.exists() and made.parent.is_dir()  # the folder the run made is gone, its parent stays
    assert kept.is_dir() and list(kept.iterdir()) == []  # a folder the user made is kept, empty as it was


# --------------------------------------------------------------------------- build


@pytest.fixture
def tiny_mnist(tmp_path):
    rng = np.random.default_rng(0)
    return write_npz(
        tmp_path / "mnist.npz",
        x_train=rng.integers(0, 256, (200, 28, 28), dtype=np.uint8),
        y_train=np.repeat(np.arange(10, dtype=np.uint8), 20),
        x_test=rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
        y_test=rng.integers(0, 10, 30, dtype=np.uint8),
    )


@pytest.mark.parametrize("part", [None, "iid", "dirichlet", "shards", "quantity"])
def test_build_mnist_partitions_the_training_split_and_keeps_the_test_split(tiny_mnist, part):
    x_train, y_train, x_test, y_test = load_mnist(tiny_mnist)
    pop = build("mnist", num_clients=10, partition=part, data_path=tiny_mnist, seed=1)
    assert pop.num_clients == 10 and pop.num_classes == 10 and pop.feature_shape == (28, 28, 1)
    # Same rows, each once: match every population row to its training row by content.
    keys = {row.tobytes(): i for i, row in enumerate(x_train)}
    rows = np.array([keys[r.tobytes()] for r in pop.x])
    np.testing.assert_array_equal(np.sort(rows), np.arange(200))
    np.testing.assert_array_equal(pop.y, y_train[rows])
    np.testing.assert_array_equal(pop.x_test, x_test)
    np.testing.assert_array_equal(pop.y_test, y_test)
    assert pop.name.startswith("mnist/" + (part or "iid"))


def test_build_mnist_shards_give_two_labels_per_client(tiny_mnist):
    pop = build("mnist", num_clients=10, partition="shards", shards_per_client=2, data_path=tiny_mnist)
    assert all(np.unique(pop.client(i)[1]).size == 2 for i in range(10))


def test_build_forwards_partition_hyperparameters(tiny_mnist):
    def entropy(pop):
        return label_entropy(pop.y, [np.arange(o, o + c) for o, c in zip(pop.offsets, pop.counts)], 10)

    skewed = build("mnist", num_clients=5, partition="dirichlet", alpha=0.05, data_path=tiny_mnist)
    mixed = build("mnist", num_clients=5, partition="dirichlet", alpha=100.0, data_path=tiny_mnist)
    assert entropy(skewed) < entropy(mixed)
    flat = build("mnist", num_clients=10, partition="quantity", sigma=0.0, data_path=tiny_mnist)
    steep = build("mnist", num_clients=10, partition="quantity", sigma=2.0, data_path=tiny_mnist)
    assert flat.counts.max() - flat.counts.min() <= 1 < steep.counts.max() - steep.counts.min()


def test_build_mnist_real_file(mnist_path):
    pop = build("mnist", num_clients=100, partition="iid", data_path=mnist_path)
    assert pop.num_examples == 24345 and pop.x_test.shape[0] == 10000
    assert pop.counts.min() == 243 and pop.counts.max() == 244


def test_build_synthetic_natural_is_the_generators_partition():
    pop = build("synthetic", num_clients=8, seed=4, synthetic_alpha=0.5, synthetic_beta=0.0)
    assert pop.name == "synthetic(0.5,0)" and pop.num_clients == 8
    same = build("synthetic", num_clients=8, partition="natural", seed=4, synthetic_alpha=0.5, synthetic_beta=0.0)
    np.testing.assert_array_equal(pop.x, same.x)
    other = build("synthetic", num_clients=8, seed=5, synthetic_alpha=0.5, synthetic_beta=0.0)
    assert not np.array_equal(pop.counts, other.counts)


def test_build_synthetic_with_a_partitioner_redivides_the_pooled_rows():
    natural = build("synthetic", num_clients=8, seed=4)
    pooled = build("synthetic", num_clients=8, partition="iid", seed=4)
    assert pooled.counts.max() - pooled.counts.min() <= 1
    order_n, order_p = np.lexsort(natural.x.T), np.lexsort(pooled.x.T)
    np.testing.assert_array_equal(natural.x[order_n], pooled.x[order_p])
    np.testing.assert_array_equal(natural.y[order_n], pooled.y[order_p])
    np.testing.assert_array_equal(natural.x_test, pooled.x_test)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dataset="imagenet"), r"'imagenet'.*synthetic, synthetic-regression, gaussian-mixture, mnist, npz, leaf, "
                                   r"cifar10, text"),
        (dict(dataset="cifar10", partition="natural", data_path="x"), r"cifar10 has no natural partition"),
        (dict(dataset="mnist", partition="zipf", data_path="x"), r"'zipf'.*natural, iid, dirichlet, shards, quantity"),
        (dict(dataset="mnist"), r"--data-path"),
        (dict(dataset="mnist", partition="natural", data_path="x"), r"mnist has no natural partition.*iid"),
        (dict(dataset="synthetic", partition="dirichlet", alpha=-1.0), r"alpha.*-1\.0"),
        (dict(dataset="synthetic", synthetic_beta=-2.0), r"beta.*-2\.0"),
        (dict(dataset="synthetic", num_clients=0), r"num_clients.*got 0"),
    ],
)
def test_build_rejects_bad_names_and_values(kwargs, match):
    kwargs = {"num_clients": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        build(**kwargs)


def test_build_names_match_the_public_constants():
    assert DATASETS == ("synthetic", "synthetic-regression", "gaussian-mixture", "mnist", "npz", "leaf", "cifar10",
                        "text", "packed")
    assert PARTITIONS == ("natural", "iid", "dirichlet", "shards", "quantity")
