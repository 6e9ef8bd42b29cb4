"""Pretrain the zoo transformer centrally on some fortune topics, for federated QLoRA on the others.

    python examples/pretrain_transformer.py --fortunes ../shared/data/fortunes --out pretrained

writes into the fresh folder ``--out``:

* ``base.msgpack``: the transformer's params (Flax msgpack), trained with Adam on
  the windows of the first ``--pretrain-topics`` topic files (sorted by name);
* ``pretrain-topics/`` and ``finetune-topics/``: links to the topic files each
  phase reads (the corpus itself is never copied);

and prints the ``jaxqfl run`` command that fine-tunes that base federated on the
other topics with rank-8 adapters over an NF4 base, one client per 5 fortunes,
e.g. ``--lora-rank 8 --base-quant nf4 --init-from OUT/base.msgpack``.
"""
import argparse
import os
import pathlib
import sys
import time

import jax
import numpy as np

from jaxqfl import models, tasks
from jaxqfl.data.text import load_text
from jaxqfl.models import pretrained
from jaxqfl.models.serialization import save_params

WIDTH, DEPTH, HEADS, CONTEXT = 64, 2, 4, 80  # jaxqfl run's --model transformer defaults


def topic_links(fortunes: pathlib.Path, out: pathlib.Path, count: int):
    topics = sorted(fortunes.glob("*.txt"))
    if not 0 < count < len(topics):
        sys.exit(f"error: --pretrain-topics must lie in [1, {len(topics) - 1}] ({len(topics)} topic files in "
                 f"{fortunes}), got {count}")
    for name, part in (("pretrain-topics", topics[:count]), ("finetune-topics", topics[count:])):
        (out / name).mkdir()
        for f in part:
            os.symlink(f.resolve(), out / name / f.name)
    return out / "pretrain-topics", out / "finetune-topics"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fortunes", type=pathlib.Path, required=True, help="the fortunes folder (*.txt topic files)")
    p.add_argument("--out", type=pathlib.Path, required=True, help="a new folder for the base and the topic links")
    p.add_argument("--pretrain-topics", type=int, default=20, help="topic files used for pretraining (20 of 40)")
    p.add_argument("--steps", type=int, default=600, help="Adam steps (600)")
    p.add_argument("--batch", type=int, default=32, help="windows per step (32)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not args.fortunes.is_dir():
        sys.exit(f"error: --fortunes {args.fortunes} is not a folder")
    if args.steps < 1 or args.batch < 1:
        sys.exit(f"error: --steps and --batch must be positive, got {args.steps} and {args.batch}")
    if args.out.exists() and any(args.out.iterdir()):
        sys.exit(f"error: --out {args.out} exists and is not empty; choose a new folder")
    args.out.mkdir(parents=True, exist_ok=True)
    pretrain_dir, finetune_dir = topic_links(args.fortunes, args.out, args.pretrain_topics)

    population = load_text(pretrain_dir, CONTEXT)
    task = tasks.for_population(population)
    model = models.transformer(vocab=population.num_classes, width=WIDTH, depth=DEPTH, heads=HEADS, context=CONTEXT)
    t0 = time.perf_counter()
    params = pretrained.train_centrally(model, population, task, steps=args.steps, batch=args.batch, seed=args.seed,
                                        log=lambda m: print(f"{m}  ({time.perf_counter() - t0:.0f} s)"))
    test = jax.jit(lambda p, x, y: task.metrics(model.apply(p, x), y))(
        params, population.x_test[:2048], population.y_test[:2048])
    means = {k: float(np.mean(v)) for k, v in jax.device_get(test).items()}
    finish = getattr(task, "finish", None)
    print("held-out windows of the pretraining topics:",
          {k: round(v, 3) for k, v in (finish(population.y_test[:2048])(means) if finish else means).items()})
    save_params(args.out / "base.msgpack", params)
    print(f"wrote {args.out / 'base.msgpack'}; fine-tune it federated on the other topics:\n"
          f"  jaxqfl run --dataset text --data-path {finetune_dir} --entries-per-client 5 --model transformer "
          f"--init-from {args.out / 'base.msgpack'} --lora-rank 8 --base-quant nf4 --cohort-size 200 "
          f"--client-lr 0.05 --rounds 20")


if __name__ == "__main__":
    main()
