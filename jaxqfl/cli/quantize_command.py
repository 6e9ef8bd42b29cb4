"""jaxqfl quantize: post-training quantization of a run's final model.

    jaxqfl quantize RUN_DIR --policy full --calibrate mse --calibration-clients 10 \\
        --adjust equalize,adaround,bias --out model.msgpack

Reads RUN_DIR/summary.json (its "config" rebuilds exactly the run's data and model:
``jaxqfl.saved_run.rebuild``) and RUN_DIR/final_params.msgpack (written by ``jaxqfl run``), then:

1. ``--adjust equalize``: cross-layer equalization of the float weights;
2. federated calibration of every layer's input range (``--calibrate``) on the
   first ``--rows-per-client`` rows of clients 0..N-1 (``--calibration-clients N``);
3. ``--adjust adaround`` then ``bias``: AdaRound and bias correction on those rows;
4. integer export (4-bit codes packed two per byte) and integer inference on the
   test set.

Prints float vs quantized test accuracy and model size, and writes the integer
model (``jaxqfl.models.serialization.load_integer_model`` reads it back).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys

from jaxqfl.cli.argtypes import positive_int as _positive_int

POLICIES = ("full", "w4a8", "mixed", "w8")  # presets whose weights are uniform symmetric, <= 8 bits
METHODS = ("minmax", "percentile", "mse")
ADJUSTMENTS = ("bias", "equalize", "adaround")


def _adjust(text: str) -> tuple[str, ...]:
    steps = tuple(t.strip() for t in text.split(",") if t.strip())
    if steps == ("none",):
        return ()
    bad = [s for s in steps if s not in ADJUSTMENTS]
    if bad:
        raise argparse.ArgumentTypeError(f"--adjust takes a comma-separated subset of {', '.join(ADJUSTMENTS)} "
                                         f"(or none); got {bad[0]!r}")
    return steps


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a `jaxqfl run` output folder (summary.json + final_params.msgpack)")
    p.add_argument("--policy", default="full", help=f"quantization preset: {', '.join(POLICIES)}")
    p.add_argument("--calibrate", choices=METHODS, default="minmax", help="activation range method")
    p.add_argument("--calibration-clients", type=_positive_int, default=10, help="clients 0..N-1 calibrate")
    p.add_argument("--rows-per-client", type=_positive_int, default=64, help="rows each calibration client uses")
    p.add_argument("--adjust", type=_adjust, default=(), help="comma-separated: bias, equalize, adaround (default none)")
    p.add_argument("--adaround-steps", type=_positive_int, default=300)
    p.add_argument("--out", default=None, help="integer model file (default RUN_DIR/quantized_<policy>.msgpack, "
                                                "replaced when it exists; another existing file needs --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file (never a run's own files)")


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse bad input before JAX starts: exit code 2 with a message, no traceback."""
    from jaxqfl import saved_run
    from jaxqfl.experiment.outputs import RUN_FILES, OutputError, check_output_file
    from jaxqfl.data.build import DEFAULT_TASK

    args.policy = args.policy.lower()  # as run's --quant: names are case-insensitive
    if args.policy not in POLICIES:
        parser.error(f"--policy {args.policy!r}: integer inference supports {', '.join(POLICIES)}")
    run = pathlib.Path(args.run_dir)
    if not run.is_dir():
        parser.error(f"RUN_DIR {args.run_dir!r}: no such directory")
    for name in ("summary.json", "final_params.msgpack"):
        if not (run / name).is_file():
            parser.error(f"RUN_DIR {args.run_dir!r} has no {name} (a `jaxqfl run` output folder has both)")
    try:
        args.config = saved_run.read_config(run)
    except ValueError as e:
        parser.error(str(e))
    cfg = args.config
    if cfg.get("model") not in ("mlp", "cnn", "logreg", "linear"):
        parser.error(f"{run / 'summary.json'}: unknown model {cfg.get('model')!r}")
    task = cfg.get("task") or DEFAULT_TASK.get(cfg.get("dataset"))
    if task in ("regression", "clustering"):
        parser.error(f"RUN_DIR {args.run_dir!r} is a {task} run; jaxqfl quantize reports test accuracy and "
                     f"exports classifiers only")
    if cfg.get("data_path") is not None and not os.path.exists(str(cfg["data_path"])):
        parser.error(f"the run's --data-path {cfg['data_path']!r} does not exist any more")
    if cfg.get("num_clients") is not None and args.calibration_clients > int(cfg["num_clients"]):
        parser.error(f"--calibration-clients {args.calibration_clients} exceeds the run's {cfg['num_clients']} clients")
    args.params = _read_params(parser, run / "final_params.msgpack")
    default_out = args.out is None
    if default_out:
        args.out = str(run / f"quantized_{args.policy}.msgpack")
    try:
        check_output_file(args.out)
    except OutputError as e:
        parser.error(str(e))
    out = pathlib.Path(args.out)
    if out.name in RUN_FILES and (out.parent / "summary.json").is_file():
        parser.error(f"--out {args.out!r} is a run's own {out.name}; write the integer model elsewhere")
    if out.exists() and not default_out and not args.overwrite:
        parser.error(f"--out {args.out!r} exists; add --overwrite to replace it, or choose another file")


def _read_params(parser, path: pathlib.Path) -> dict:
    """The run's final params (QAT state dropped); a damaged file is refused, naming it."""
    import msgpack
    import numpy as np

    from jaxqfl.models.serialization import load_params

    try:
        params = load_params(path)
    except (ValueError, TypeError, msgpack.exceptions.UnpackException, OSError) as e:
        parser.error(f"{path}: cannot read the run's final parameters ({type(e).__name__}: {e}); the file is "
                     f"damaged or truncated: run `jaxqfl run` again")
    if not isinstance(params, dict) or not params or not all(
            isinstance(layer, dict) and all(isinstance(v, np.ndarray) for v in layer.values())
            for layer in params.values()):
        parser.error(f"{path}: not a jaxqfl params file (expected layers of named arrays)")
    return {n: {p: v for p, v in layer.items() if ":" not in p} for n, layer in params.items()}  # drop QAT state


def _accuracy(predict, x, y, batch=1000) -> float:
    import numpy as np

    hits = sum(int(np.sum(np.asarray(predict(x[i:i + batch])).argmax(1) == y[i:i + batch]))
               for i in range(0, x.shape[0], batch))
    return hits / x.shape[0]


def main(args: argparse.Namespace) -> int:
    """Quantize the run's final model; XLA running out of memory is said (exit 2), not a traceback."""
    from jaxqfl.experiment.memory_guard import out_of_memory

    try:
        return _quantize(args)
    except Exception as e:
        why = out_of_memory(e, "fewer --calibration-clients or --rows-per-client", "this calibration")
        if why is None:
            raise
    print(f"jaxqfl quantize: error: {why}", file=sys.stderr)
    return 2


def _quantize(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    from jaxqfl import models, quant, saved_run
    from jaxqfl.models.serialization import save_integer_model
    from jaxqfl.ptq import federated_calibrate

    cfg = args.config
    try:
        run = saved_run.rebuild(cfg)
    except (ValueError, OSError) as e:
        print(f"jaxqfl quantize: error: cannot rebuild the run's data from its config: {e}", file=sys.stderr)
        return 2
    population, model, graph = run.population, run.float_model, run.graph
    if population.task != "classification":
        print(f"jaxqfl quantize: error: the run's data is for {population.task}; quantize exports classifiers",
              file=sys.stderr)
        return 2
    x_test, y_test = np.asarray(population.x_test), np.asarray(population.y_test)
    try:
        saved_run.check_params(run, args.params, str(pathlib.Path(args.run_dir) / "final_params.msgpack"))
    except ValueError as e:
        print(f"jaxqfl quantize: error: {e}", file=sys.stderr)
        return 2
    params = jax.tree.map(jax.numpy.asarray, args.params)
    float_apply = jax.jit(model.apply)
    float_acc = _accuracy(lambda xb: float_apply(params, xb), x_test, y_test)

    if "equalize" in args.adjust:
        params = quant.equalize(params, graph)
    ids = np.arange(args.calibration_clients)
    ranges = federated_calibrate(model, params, population, args.calibrate, client_ids=ids,
                                 rows_per_client=args.rows_per_client)
    policy = quant.calibrated_policy(args.policy, params, ranges)
    if "adaround" in args.adjust or "bias" in args.adjust:
        rows = np.concatenate([population.client(int(i))[0][:args.rows_per_client] for i in ids])
        inputs = models.layer_inputs(model, params, rows)
        if "adaround" in args.adjust:
            params = quant.adaround(params, policy, inputs, graph, steps=args.adaround_steps)
        if "bias" in args.adjust:
            params = quant.bias_correction(params, policy, inputs, graph)
    params = quant.bias_to_grid(params, policy, graph)
    int_model = quant.export_integer(params, policy, graph)
    int_acc = _accuracy(lambda xb: quant.integer_apply(int_model, xb), x_test, y_test)
    out = pathlib.Path(args.out)
    try:  # checked before any work; a disk that fills meanwhile is still named, not a traceback
        out.parent.mkdir(parents=True, exist_ok=True)
        save_integer_model(out, int_model)
    except OSError as e:
        print(f"jaxqfl quantize: error: cannot write --out {args.out!r}: {e.strerror or e}", file=sys.stderr)
        return 1
    from jaxqfl.models.cost import FLOAT_BITS, model_cost

    cost = model_cost(model, args.policy, x_test[:1])  # BOPs = MACs x weight bits x input bits, per layer
    float_bops = cost.macs * FLOAT_BITS * FLOAT_BITS
    print("\n".join([
        "",
        f"jaxqfl quantize: {args.run_dir} ({cfg['dataset']} / {cfg['model']}), policy {args.policy}",
        f"  calibration      {args.calibrate}, clients 0..{args.calibration_clients - 1}, "
        f"{args.rows_per_client} rows each; adjust: {', '.join(args.adjust) or 'none'}",
        f"  test accuracy    float {float_acc:.4f}   integer {int_acc:.4f}   ({100 * (int_acc - float_acc):+.2f} pp)",
        f"  model size       float {int_model.float_bytes:,} B   integer {int_model.int_bytes:,} B   "
        f"({int_model.float_bytes / int_model.int_bytes:.1f}x smaller)",
        f"  compute          {cost.macs:,} MACs an example; BOPs float {float_bops:,}   {args.policy} {cost.bops:,}   "
        f"({float_bops / max(cost.bops, 1):.0f}x fewer; " + ", ".join(
            f"{c.layer} {c.weight_bits}x{c.activation_bits} bits" for c in cost.layers) + ")",
        f"  written          {out}",
    ]))
    return 0
