"""Independent NumPy (float64) implementations of each algorithm's round, from the papers.

The model is linear regression with a bias, ``f(x) = x w + b``, as one flat
vector ``theta = [w, b]``; client i's loss is the engine's regression task,
``F_i(theta) = mean_j (x_j w + b - y_j)^2``, so its full-batch gradient is
``2/n_i X~^T (X~ theta - y)`` with ``X~ = [X, 1]``. Local steps are full batch,
so every reference below is exact (no sampling). ``clients`` is a list of
``(X~, y)``; ``steps[i]`` is client i's number of local steps; ``cohort`` the ids
of a round's sampled clients.
"""
import numpy as np


def design(x):
    x = np.asarray(x, np.float64)
    return np.hstack([x, np.ones((len(x), 1))])


def grad(theta, client):
    xd, y = client
    return 2.0 * xd.T @ (xd @ theta - y) / len(y)


def flat_linear(params):
    """``[w, b]`` from ``models.linear_regression(1)``'s params."""
    dense = params["Dense_0"]
    return np.concatenate([np.asarray(dense["kernel"], np.float64)[:, 0], np.asarray(dense["bias"], np.float64)])


def average_minimiser(clients, weights=None):
    """argmin sum_i p_i F_i (uniform p_i when weights is None)."""
    weights = np.ones(len(clients)) if weights is None else np.asarray(weights, np.float64)
    h = sum(p * xd.T @ xd / len(y) for p, (xd, y) in zip(weights, clients))
    r = sum(p * xd.T @ y / len(y) for p, (xd, y) in zip(weights, clients))
    return np.linalg.solve(h, r)


def weighted_mean(vectors, weights):
    return np.average(np.asarray(vectors), axis=0, weights=np.asarray(weights, np.float64))


# ---------------------------------------------------------------- FedAvg / FedProx (Li et al. 2020)

def fedprox_round(theta, clients, cohort, steps, lr, mu, weights):
    """Clients: K steps of theta_i <- theta_i - lr (grad F_i + mu (theta_i - theta)); server: weighted mean."""
    deltas = []
    for i in cohort:
        t = theta.copy()
        for _ in range(steps[i]):
            t = t - lr * (grad(t, clients[i]) + mu * (t - theta))
        deltas.append(t - theta)
    return theta + weighted_mean(deltas, [weights[i] for i in cohort])


# ---------------------------------------------------------------- SCAFFOLD (Karimireddy et al. 2020)

def scaffold_round(x, c, controls, clients, cohort, steps, local_lr, global_lr):
    """Algorithm 1, option II; ``controls`` is [N, d] (updated in place for the cohort)."""
    dys, dcs = [], []
    for i in cohort:
        y = x.copy()
        for _ in range(steps[i]):
            y = y - local_lr * (grad(y, clients[i]) - controls[i] + c)
        ci_new = controls[i] - c + (x - y) / (steps[i] * local_lr)
        dys.append(y - x)
        dcs.append(ci_new - controls[i])
        controls[i] = ci_new
    x = x + global_lr * np.mean(dys, axis=0)
    c = c + len(cohort) / len(clients) * np.mean(dcs, axis=0)
    return x, c, controls


# ---------------------------------------------------------------- FedNova (Wang et al. 2020)

def fednova_round(x, clients, cohort, steps, lr, momentum, weights):
    """Local heavy-ball SGD (m <- rho m + g; y <- y - lr m); Delta = tau_eff sum p_i d_i.

    ``d_i = Delta_i / ||a_i||_1`` with ``a_{i,k} = sum_{j=k}^{tau-1} rho^(j-k)`` summed explicitly
    (not the closed form the library uses).
    """
    p = np.array([weights[i] for i in cohort], np.float64)
    p = p / p.sum()
    ds, norms = [], []
    for i in cohort:
        y, m = x.copy(), np.zeros_like(x)
        for _ in range(steps[i]):
            m = momentum * m + grad(y, clients[i])
            y = y - lr * m
        tau = steps[i]
        a = np.array([sum(momentum ** (j - k) for j in range(k, tau)) for k in range(tau)])
        norms.append(a.sum())
        ds.append((y - x) / a.sum())
    tau_eff = float(p @ np.array(norms))
    return x + tau_eff * (p @ np.array(ds))


# ---------------------------------------------------------------- FedDyn (Acar et al. 2021)

def feddyn_round(theta, h, grads_state, clients, cohort, steps, lr, alpha):
    """Algorithm 1 with K full-batch SGD steps on the regularized local objective."""
    thetas = []
    for k in cohort:
        t = theta.copy()
        for _ in range(steps[k]):
            t = t - lr * (grad(t, clients[k]) - grads_state[k] + alpha * (t - theta))
        grads_state[k] = grads_state[k] - alpha * (t - theta)
        thetas.append(t)
    h = h - alpha / len(clients) * np.sum([t - theta for t in thetas], axis=0)
    theta = np.mean(thetas, axis=0) - h / alpha
    return theta, h, grads_state


# ---------------------------------------------------------------- MimeLite (Karimireddy et al. 2021)

class Momentum:
    """optax.sgd(lr, momentum=beta): m' = g + beta m, step -lr m'."""

    def __init__(self, lr, beta):
        self.lr, self.beta = lr, beta

    def init(self, d):
        return {"m": np.zeros(d)}

    def step(self, g, s):  # U(g, s)
        return -self.lr * (g + self.beta * s["m"])

    def stats(self, g, s):  # V(g, s)
        return {"m": g + self.beta * s["m"]}


class Adam:
    """optax.adam(lr, b1, b2, eps) with bias correction by the step count."""

    def __init__(self, lr, b1=0.9, b2=0.999, eps=1e-8):
        self.lr, self.b1, self.b2, self.eps = lr, b1, b2, eps

    def init(self, d):
        return {"m": np.zeros(d), "v": np.zeros(d), "count": 0}

    def stats(self, g, s):
        return {"m": self.b1 * s["m"] + (1 - self.b1) * g, "v": self.b2 * s["v"] + (1 - self.b2) * g * g,
                "count": s["count"] + 1}

    def step(self, g, s):
        n = self.stats(g, s)
        m_hat = n["m"] / (1 - self.b1 ** n["count"])
        v_hat = n["v"] / (1 - self.b2 ** n["count"])
        return -self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


class ReddiAlgorithm2:
    """Reddi et al. 2021 ("Adaptive Federated Optimization", ICLR), Algorithm 2, server side.

    From the paper: m_t = b1 m_{t-1} + (1 - b1) Delta_t; v_t = v_{t-1} + Delta_t^2 (FedAdagrad),
    v_t = v_{t-1} - (1 - b2) Delta_t^2 sign(v_{t-1} - Delta_t^2) (FedYogi), v_t = b2 v_{t-1} +
    (1 - b2) Delta_t^2 (FedAdam); x_{t+1} = x_t + eta m_t / (sqrt(v_t) + tau); v_{-1} = tau^2,
    m_{-1} = 0; no bias correction. Works on the delta Delta_t itself (not on -Delta_t).
    """

    def __init__(self, kind, eta, b1=0.9, b2=0.99, tau=1e-3):
        self.kind, self.eta, self.b1, self.b2, self.tau = kind, eta, b1, b2, tau

    def init(self, d):
        return {"m": np.zeros(d), "v": np.full(d, self.tau ** 2)}

    def step(self, x, delta, s):
        """``(x_{t+1}, state_t)`` from ``x_t``, ``Delta_t`` and ``state_{t-1}``."""
        m = self.b1 * s["m"] + (1 - self.b1) * delta
        d2 = delta * delta
        if self.kind == "adagrad":
            v = s["v"] + d2
        elif self.kind == "yogi":
            v = s["v"] - (1 - self.b2) * d2 * np.sign(s["v"] - d2)
        else:
            v = self.b2 * s["v"] + (1 - self.b2) * d2
        return x + self.eta * m / (np.sqrt(v) + self.tau), {"m": m, "v": v}


def mimelite_round(x, s, opt, clients, cohort, steps, weights):
    """Clients step with U(., s) frozen; server s <- V(mean grad F_i(x), s), x <- mean y_i."""
    p = [weights[i] for i in cohort]
    ys, gs = [], []
    for i in cohort:
        gs.append(grad(x, clients[i]))
        y = x.copy()
        for _ in range(steps[i]):
            y = y + opt.step(grad(y, clients[i]), s)
        ys.append(y)
    s = opt.stats(weighted_mean(gs, p), s)
    return weighted_mean(ys, p), s


# ---------------------------------------------------------------- helpers shared by the tests

def clients_of(population):
    """``[(X~, y)]`` in float64 from a population's client blocks."""
    out = []
    for i in range(population.num_clients):
        x, y = population.client(i)
        out.append((design(x), np.asarray(y, np.float64)))
    return out


def full_batch_epoch_steps(counts, epochs):
    """Local steps of ``LocalSchedule(local_epochs=E, batch_size=None)``: ceil(E n_i / n_max)."""
    counts = np.asarray(counts)
    return [int(-(-epochs * n // counts.max())) for n in counts]
