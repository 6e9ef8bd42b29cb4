"""The run settings of an experiment. How a run executes and what it writes.

Each field is one setting (``jaxqfl.experiment.setting``): its annotation the type, its default the
default, its doc the help of the ``jaxqfl run`` flag generated from it.
"""
from __future__ import annotations

from dataclasses import dataclass

from jaxqfl.choices import CLIENT_STATE_HOMES
from jaxqfl import value_kinds as v
from jaxqfl.experiment.setting import Section, setting


@dataclass(frozen=True)
class Execution(Section):
    """Execution."""

    section_name = "execution"

    devices: int | None = setting(None, v.positive_int, help='devices in the mesh (default: all)')
    chunk_size: int | None = setting(None, v.chunk_size,
                help="clients per vmap: 'auto' (default: measured by --autotune, else the cost model) or an integer")
    autotune: bool | None = setting(None, v.on_off, metavar='{on,off}',
                help='with --chunk-size auto, time a few candidate chunk sizes and keep the fastest, cached in '
                     '$JAXQFL_CACHE_DIR or ~/.cache/jaxqfl; off uses the cost model (default: on when the run is long '
                     'enough to repay the search, jaxqfl.engine.tuning_rule)')
    client_state: str = setting('auto', choices=CLIENT_STATE_HOMES,
                help='where per-client states (error feedback, SCAFFOLD controls, ...) live: replicated on every '
                     'device, sharded over the devices, or on the host and streamed with the cohort (default: auto, '
                     'by size)')
    eval_every: int | None = setting(None, v.positive_int,
                help="evaluate every K rounds (default: the dataset's); checkpoints: --checkpoint-every")
    seed: int | None = setting(None, v.seed, help='run seed (default 0)')
    data_seed: int | None = setting(None, v.seed,
                help="seed of the generated population, its partition and an attack's malicious set (default: the run"
                     ' seed; in a sweep, the first seed, shared by every config, so config s repeats as jaxqfl run '
                     '--seed s --data-seed <first seed>)')
    seeds: tuple[int, ...] | None = setting(None, v.seed_list,
                help='run several seeds as one program (a sweep), e.g. 0-7 or 0,3,5; with list-valued flags the '
                     'Cartesian product runs; writes OUT/<config>/ per config and OUT/sweep.{json,md}')
    stream: bool = setting(False, switch=True,
                help="keep the population in host memory and stream each round's cohort to the devices "
                     '(engine.build_streaming), for populations larger than device memory')
    verbose: bool = setting(False, switch=True, help='print how the chunk size was chosen')
    checkpoint_every: int | None = setting(None, v.positive_int, metavar='K',
                help='write a checkpoint every K rounds (default: at evaluations, at most one per 30 s of the '
                     'run, jaxqfl.experiment.checkpoint_policy); the last round and a stopped run always write one')
