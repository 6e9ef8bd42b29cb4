"""``jaxqfl data``: prepare a dataset on disk.

    jaxqfl data pack SRC OUT [--task TASK] [--num-clients C] [--seed S] [--force]

``pack`` reads SRC with the loader of ``jaxqfl run --dataset npz`` (an .npz
file: keys x, y, optional client_id, x_test, y_test) or ``--dataset leaf`` (a
folder holding train/*.json and test/*.json), with the same checks and the
same natural clients (client_id, LEAF users; an npz without client_id is split
iid over --num-clients; the run's --seed holds out the same test rows; a LEAF
folder of string rows, such as Shakespeare, with --task next-token: the
next-token windows of ``--dataset leaf --task next-token``), and writes the
packed layout OUT (jaxqfl.data.packed): x.npy, y.npy, offsets.npy (int64 CSR
row pointer, C + 1), x_test.npy, y_test.npy and meta.json.
``jaxqfl run --dataset packed --data-path OUT`` memory-maps it and reads only
each round's cohort rows from disk (it implies --stream): the population need
not fit in host memory. An existing non-empty OUT is refused unless --force.
"""
from __future__ import annotations

import argparse
import os
import sys

from jaxqfl.cli.argtypes import positive_int
from jaxqfl.cli.argtypes import seed as seed_type
from jaxqfl.data.population import TASKS


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", required=True)
    pack = sub.add_parser("pack", help="write an npz file or a LEAF folder as a packed, memory-mapped population",
                          description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    pack.add_argument("src", metavar="SRC", help="an .npz file (keys x, y, optional client_id, x_test, y_test) or a "
                                                 "LEAF folder (train/*.json, test/*.json)")
    pack.add_argument("out", metavar="OUT", help="the folder to write (must not exist or be empty, unless --force)")
    pack.add_argument("--task", choices=TASKS, default=None,
                      help="what the targets are for (default: inferred: integer labels classification, else "
                           "regression); next-token: a LEAF folder of string rows (Shakespeare), packed as the "
                           "next-token windows `jaxqfl run --dataset leaf --task next-token` trains on")
    pack.add_argument("--num-clients", type=positive_int, default=None,
                      help="an npz without client_id: the clients of its iid split (required then); with natural "
                           "clients it must equal theirs")
    pack.add_argument("--seed", type=seed_type, default=0, help="seeds the held-out test rows and the iid split (0)")
    pack.add_argument("--force", action="store_true", help="replace an existing OUT")
    p.pack_parser = pack


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse a missing SRC or an OUT that would be overwritten, before anything is read."""
    pack = parser.pack_parser
    if not os.path.exists(args.src):
        pack.error(f"SRC {args.src!r}: no such file or folder (an .npz file or a LEAF folder)")
    from jaxqfl.data.packed import check_out

    try:
        check_out(args.out, args.force)
    except (ValueError, OSError) as err:
        pack.error(f"OUT {err.strerror if isinstance(err, OSError) and err.strerror else err}")
    if args.task == "next-token" and not os.path.isdir(args.src):
        pack.error(f"--task next-token packs a LEAF folder of string rows (Shakespeare's layout); SRC {args.src!r} "
                   f"is a file")
    if os.path.abspath(args.out) == os.path.abspath(args.src):
        pack.error(f"OUT {args.out!r} is SRC: write the packed layout elsewhere")


def main(args: argparse.Namespace) -> int:
    from jaxqfl.data.files import load_leaf, load_npz
    from jaxqfl.data.packed import write_packed

    leaf = os.path.isdir(args.src)
    try:
        if leaf:
            population = load_leaf(args.src, task=args.task, num_clients=args.num_clients, seed=args.seed)
        else:
            population = load_npz(args.src, task=args.task, seed=args.seed,
                                  **({"num_clients": args.num_clients} if args.num_clients is not None else {}))
        info = write_packed(population, args.out, source=args.src, force=args.force)
    except (ValueError, OSError) as err:
        print(f"jaxqfl data pack: error: {err}", file=sys.stderr)
        return 2
    print(f"jaxqfl data pack: {info.path}: {info.num_clients:,} clients, {info.num_rows:,} training rows "
          f"{population.feature_shape} {population.x.dtype}, {population.x_test.shape[0]:,} test rows, "
          f"{population.task}; {info.bytes:,} bytes ({info.bytes / 2**20:,.1f} MiB) in {', '.join(info.files)}")
    print(f"  run it with: jaxqfl run --dataset packed --data-path {info.path} ...")
    return 0
