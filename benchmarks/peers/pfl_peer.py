"""The peer workloads in pfl-research (``pfl``, PyTorch backend, one CPU thread, one process).

    python benchmarks/peers/pfl_peer.py --workload mlp --data-path mlp.npz --out pfl-mlp.json

FedAvg (``pfl.algorithm.FederatedAveraging``) on a ``pfl.aggregate.simulate.SimulatedBackend``;
each client is one ``pfl.data.dataset.Dataset`` of its rows, each cohort member drawn
uniformly at random (pfl samples one user at a time, so a cohort may repeat one);
updates weighted by the clients' example counts (``WeightByDatapoints``); local
training is pfl's own SGD loop (``NNTrainHyperParams``: the workload's epochs or
steps, batch and learning rate); the central optimizer is SGD at lr 1, so the new
model is the example-weighted mean of the clients' models.
A callback marks the end of each round and evaluates the test loss outside the timed
rounds. Writes the report of ``workloads.report``.
"""
from __future__ import annotations

import sys
import time

T_PROCESS = time.perf_counter()

import workloads as wl  # noqa: E402  (this folder is sys.path[0])
import torch_models as tm  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from pfl.aggregate.simulate import SimulatedBackend  # noqa: E402
from pfl.aggregate.weighting import WeightByDatapoints  # noqa: E402
from pfl.algorithm import FederatedAveraging, NNAlgorithmParams  # noqa: E402
from pfl.callback.base import TrainingProcessCallback  # noqa: E402
from pfl.data.federated_dataset import FederatedDataset  # noqa: E402
from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams  # noqa: E402
from pfl.metrics import Metrics  # noqa: E402
from pfl.model.pytorch import PyTorchModel  # noqa: E402


class _Rounds(TrainingProcessCallback):
    """Marks the end of each central iteration, then evaluates the test loss (untimed)."""

    def __init__(self, clock, x_test, y_test):
        self.clock, self.x_test, self.y_test, self.losses = clock, x_test, y_test, []

    def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
        self.clock.round_done()
        self.clock.pause()
        self.losses.append(tm.test_loss(model.pytorch_model, self.x_test, self.y_test))
        self.clock.resume()
        return False, Metrics()


def main(argv=None) -> int:
    args = wl.peer_args(__doc__.splitlines()[0], argv)
    import pfl

    settings = wl.WORKLOADS[args.workload]
    data = wl.load(args.data_path)
    t = tm.tensors(data)
    np.random.seed(args.seed)  # pfl's random user sampler draws from NumPy's global generator
    users = {i: (t["x"][s], t["y"][s]) for i, s in enumerate(data["clients"])}
    sampler = lambda: int(np.random.randint(len(users)))  # noqa: E731  uniform, with replacement across rounds
    federated = FederatedDataset.from_slices(users, sampler)

    net = tm.net(settings, data["x"].shape[1], data["num_classes"], args.seed)
    model = PyTorchModel(model=net, local_optimizer_create=torch.optim.SGD,
                         central_optimizer=torch.optim.SGD(net.parameters(), lr=1.0))
    backend = SimulatedBackend(training_data=federated, val_data=federated, postprocessors=[WeightByDatapoints()])
    train = NNTrainHyperParams(local_learning_rate=settings["client_lr"], local_batch_size=settings["batch_size"],
                               local_num_epochs=settings["local_epochs"], local_num_steps=settings["local_steps"])
    params = NNAlgorithmParams(central_num_iterations=args.rounds, evaluation_frequency=10 ** 9,
                               train_cohort_size=settings["cohort_size"], val_cohort_size=0)
    clock = wl.RoundClock()
    rounds = _Rounds(clock, t["x_test"], t["y_test"])
    FederatedAveraging().run(algorithm_params=params, backend=backend, model=model, model_train_params=train,
                             model_eval_params=NNEvalHyperParams(local_batch_size=None), callbacks=[rounds],
                             send_metrics_to_platform=False)
    wl.report(args, clock, rounds.losses, "pfl", {"pfl": pfl.__version__, "torch": torch.__version__},
              process_s=time.perf_counter() - T_PROCESS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
