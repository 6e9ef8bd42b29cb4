"""Independent NumPy (float64) rounds of the personalized and fair algorithms, from their papers.

Same setting as ``algorithm_references``: linear regression ``theta = [w, b]``,
full-batch local steps (``steps[i]`` of them for client i), so every reference
is exact. Personal state is a NumPy array per client.
"""
import numpy as np

from algorithm_references import grad, weighted_mean


def loss(theta, client):
    xd, y = client
    return float(np.mean((xd @ theta - y) ** 2))


def ditto_round(theta, personal, clients, cohort, steps, lr, personal_lr, lam, weights):
    """Li et al. 2021, Algorithm 1: w_k by local SGD from theta (uploaded as a delta); v_k by SGD on F_k with
    the pull lam ||v - theta||^2 / 2 taken implicitly. Steps alternate: even steps w_k, odd steps v_k."""
    deltas = []
    for i in cohort:
        w, v = theta.copy(), personal[i].copy()
        for s in range(steps[i]):
            if s % 2 == 0:
                w = w - lr * grad(w, clients[i])
            else:
                v = (v - personal_lr * grad(v, clients[i]) + personal_lr * lam * theta) / (1 + personal_lr * lam)
        deltas.append(w - theta)
        personal[i] = v
    return theta + weighted_mean(deltas, [weights[i] for i in cohort]), personal


def head_round(theta, heads, clients, cohort, steps, lr, head, weights, *, phases):
    """FedRep (Collins et al. 2021, Algorithm 1; ``phases``: the first ceil(K/2) steps move the head only, the
    rest the body only) or FedPer (Arivazhagan et al. 2019: every step moves both). ``head`` is a boolean mask
    over theta; the server averages the bodies and keeps its own head."""
    bodies = []
    for i in cohort:
        t = np.where(head, heads[i], theta)
        first = -(-steps[i] // 2)
        for s in range(steps[i]):
            g = grad(t, clients[i])
            move = (head if s < first else ~head) if phases else np.ones_like(head)
            t = t - lr * g * move
        heads[i] = np.where(head, t, 0.0)
        bodies.append(np.where(head, 0.0, t - theta))
    return theta + weighted_mean(bodies, [weights[i] for i in cohort]), heads


def perfedavg_round(theta, clients, cohort, steps, alpha, beta, weights):
    """Fallah et al. 2020, Algorithm 1 (first-order): floor(K/2) meta-steps w <- w - beta grad F(w - alpha grad F(w))."""
    models = []
    for i in cohort:
        w = theta.copy()
        for _ in range(steps[i] // 2):
            w = w - beta * grad(w - alpha * grad(w, clients[i]), clients[i])
        models.append(w - theta)
    return theta + weighted_mean(models, [weights[i] for i in cohort])


def qffl_round(theta, clients, cohort, steps, lr, q):
    """Li et al. 2020 (ICLR), Algorithm 2 (q-FedAvg) with L = 1 / lr."""
    big_l = 1.0 / lr
    deltas, hs = [], []
    for i in cohort:
        f = loss(theta, clients[i])
        w = theta.copy()
        for _ in range(steps[i]):
            w = w - lr * grad(w, clients[i])
        dw = big_l * (theta - w)
        deltas.append(f ** q * dw)
        hs.append(q * f ** (q - 1) * dw @ dw + big_l * f ** q)
    return theta - np.sum(deltas, axis=0) / np.sum(hs)
