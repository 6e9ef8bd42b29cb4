"""The peers' PyTorch side: one thread, the workload's model, its local SGD and the test loss.

``net(settings, num_features, num_classes)``: ``Linear(F, 200) - ReLU - Linear(200, C)``
for ``mlp`` (hidden ``[200]``), ``Linear(F, C)`` for ``tiny`` (logistic regression);
the loss is the mean softmax cross-entropy over a batch.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
try:
    torch.set_num_interop_threads(1)
except RuntimeError:  # already set in this process
    pass


class Net(torch.nn.Module):
    """An MLP (``hidden`` may be empty: logistic regression) with the ``loss``/``metrics`` pair pfl expects."""

    def __init__(self, num_features: int, hidden: list[int], num_classes: int):
        super().__init__()
        widths = [num_features, *hidden]
        layers: list[torch.nn.Module] = []
        for a, b in zip(widths, widths[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        self.body = torch.nn.Sequential(*layers, torch.nn.Linear(widths[-1], num_classes))

    def forward(self, x):
        return self.body(x)

    def loss(self, x, y, eval=False):  # noqa: A002 (pfl's keyword)
        self.eval() if eval else self.train()
        return torch.nn.functional.cross_entropy(self(x), y)

    @torch.no_grad()
    def metrics(self, x, y, eval=True):  # noqa: A002
        from pfl.metrics import Weighted

        loss = torch.nn.functional.cross_entropy(self(x), y, reduction="sum")
        return {"loss": Weighted(float(loss), len(y))}


def net(settings: dict, num_features: int, num_classes: int, seed: int) -> Net:
    torch.manual_seed(seed)
    return Net(num_features, list(settings["hidden"]), num_classes)


def tensors(data: dict) -> dict:
    """The exported arrays as torch tensors (float32 features, int64 labels)."""
    return {"x": torch.from_numpy(np.ascontiguousarray(data["x"], np.float32)),
            "y": torch.from_numpy(data["y"].astype(np.int64)),
            "x_test": torch.from_numpy(np.ascontiguousarray(data["x_test"], np.float32)),
            "y_test": torch.from_numpy(data["y_test"].astype(np.int64))}


@torch.no_grad()
def test_loss(model: torch.nn.Module, x_test, y_test) -> float:
    model.eval()
    return float(torch.nn.functional.cross_entropy(model(x_test), y_test))


def local_sgd(model: torch.nn.Module, x, y, settings: dict, generator: torch.Generator) -> float:
    """The workload's local work on one client: ``local_epochs`` shuffled epochs of batches, or
    ``local_steps`` batches drawn by cycling through shuffled epochs; plain SGD at ``client_lr``.
    Returns the mean batch loss."""
    n, b = len(y), settings["batch_size"]
    opt = torch.optim.SGD(model.parameters(), lr=settings["client_lr"])
    model.train()
    steps = settings["local_steps"] or settings["local_epochs"] * -(-n // b)
    total, done, order, pos = 0.0, 0, torch.randperm(n, generator=generator), 0
    while done < steps:
        if pos >= n:
            order, pos = torch.randperm(n, generator=generator), 0
        idx = order[pos:pos + b]
        pos += b
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        total += loss.item()
        done += 1
    return total / steps
