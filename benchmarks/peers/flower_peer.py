"""The peer workloads in Flower (``flwr[simulation]``: Ray, one single-threaded actor per core, PyTorch).

    python benchmarks/peers/flower_peer.py --workload mlp --data-path mlp.npz --out flower-mlp.json

A ``ServerApp`` runs ``flwr.serverapp.strategy.FedAvg`` (``fraction_train`` =
cohort / clients, no federated evaluation; aggregation weighted by the clients'
``num-examples``) over one virtual SuperNode per client; the ``ClientApp``'s
train handler loads the global arrays, runs the workload's local SGD
(``torch_models.local_sgd``) on its partition and replies with its arrays and
example count. ``flwr.simulation.run_simulation`` runs both, the clients on Ray
actors of one CPU each. The strategy's centralized ``evaluate_fn`` (called after
each round) marks the end of a round and evaluates the test loss, untimed. Round
1 is timed from the ``run_simulation`` call, so it holds Ray's start. Writes the
report of ``workloads.report``.
"""
from __future__ import annotations

import os
import sys
import time

T_PROCESS = time.perf_counter()

import workloads as wl  # noqa: E402  (this folder is sys.path[0]; PYTHONPATH for Ray's workers)
import torch_models as tm  # noqa: E402

import torch  # noqa: E402
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402


def client_app(workload: str, data_path: str, seed: int) -> ClientApp:
    settings = wl.WORKLOADS[workload]
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        data, t = wl.load_cached(data_path, tm.tensors)
        pid = int(context.node_config["partition-id"])
        rows = data["clients"][pid]
        model = tm.net(settings, data["x"].shape[1], data["num_classes"], seed)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        round_ = int(msg.content["config"].get("server-round", 0)) if "config" in msg.content else 0
        gen = torch.Generator().manual_seed(seed * 1_000_003 + round_ * 10_007 + pid)
        loss = tm.local_sgd(model, t["x"][rows], t["y"][rows], settings, gen)
        reply = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                            "metrics": MetricRecord({"train_loss": loss, "num-examples": rows.stop - rows.start})})
        return Message(content=reply, reply_to=msg)

    return app


def server_app(args, settings, data, t, clock, losses) -> ServerApp:
    app = ServerApp()
    num_clients = len(data["clients"])

    def evaluate(server_round: int, arrays: ArrayRecord):
        if server_round > 0:
            clock.round_done()
        clock.pause()
        if server_round > 0:
            model = tm.net(settings, data["x"].shape[1], data["num_classes"], args.seed)
            model.load_state_dict(arrays.to_torch_state_dict())
            losses.append(tm.test_loss(model, t["x_test"], t["y_test"]))
        clock.resume()
        return MetricRecord({"test_loss": losses[-1]}) if losses else None

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(fraction_train=settings["cohort_size"] / num_clients, fraction_evaluate=0.0,
                          min_train_nodes=settings["cohort_size"], min_available_nodes=num_clients)
        initial = tm.net(settings, data["x"].shape[1], data["num_classes"], args.seed)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(initial.state_dict()), num_rounds=args.rounds,
                       evaluate_fn=evaluate)

    return app


def main(argv=None) -> int:
    args = wl.peer_args(__doc__.splitlines()[0], argv)
    import flwr
    import ray

    settings = wl.WORKLOADS[args.workload]
    data, t = wl.load_cached(args.data_path, tm.tensors)
    cores = os.cpu_count() or 1
    losses: list[float] = []
    clock = wl.RoundClock()
    run_simulation(
        server_app=server_app(args, settings, data, t, clock, losses),
        client_app=client_app(args.workload, args.data_path, args.seed),
        num_supernodes=len(data["clients"]),
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                        "init_args": {"num_cpus": cores, "num_gpus": 0, "include_dashboard": False}},
    )
    wl.report(args, clock, losses, "flower", {"flwr": flwr.__version__, "ray": ray.__version__,
                                              "torch": torch.__version__},
              process_s=time.perf_counter() - T_PROCESS, actors=cores)
    return 0


if __name__ == "__main__":
    sys.exit(main())
