"""Sweeps: S configurations (seeds, hyper-parameters) of one experiment as ONE compiled program.

A sweep puts the configurations on a leading axis and ``vmap``s the whole
round over it::

    states  = vmap(init)(run keys)                        every ServerState leaf gets a leading [S]
    block   = lax.scan over rounds of
                vmap over configs s of round_program(make_algorithm(hp[s]), make_aggregator(hp[s]))(states[s])

so S configurations cost one build and one compilation, and fill the device
with S times the work of one. Hyper-parameters reach the round as traced
float32 scalars: ``make_algorithm(hp)`` and ``make_aggregator(hp)`` receive a
dict ``{name: traced scalar}`` and must build their pieces from those values
(optax optimizers accept traced learning rates), never from Python floats
closed over at build time. Each configuration has its own run key
(``jax.random.key(seed)``); the population and its partition are shared by
all configurations (built once, by the caller).

Local steps can vary too: a config key ``"local_steps"`` (with a schedule in
``local_steps`` mode) pads every config's local scan to the sweep's largest
count and masks the steps past the config's own (``LocalSchedule.padded``), so
a config costs the largest config's steps but computes its own.

Config ``s`` of a sweep equals the single run of config ``s`` (``engine.build``
with ``make_algorithm(hp[s])`` and seed ``s``) to float tolerance: the vmap
batches the same arithmetic, with every random draw keyed by the config's own
run key.

Variants: configs may also differ in what cannot be a traced scalar: the
model (a QAT preset), the uplink or downlink codec's kind, the aggregator built
around a codec. Each :class:`SweepVariant` is one copy of the round in the
program; config ``s`` names its variant by the config key ``"variant"``, and
every variant's configs are vmapped together, so the program holds one round
per variant and computes each config once (no select over variants)::

    block = lax.scan over rounds of
              for each variant v (unrolled):  vmap over v's configs of round_v(states[v's configs])
              states reassembled in config order

Within a variant, a codec's traced parameter (``jaxqfl.compress.families``:
QSGD's levels, uniform's bits, top-k's and random-k's fraction) comes from a
hyper-parameter like any other.
Every variant must keep states of one structure (the stacked ``ServerState``):
their models' params must match (every QAT preset except ``lsq4`` keeps the
float model's), and per-client codec states are kept as one slot per variant
(:func:`slotted`), so ``qsgd:4+ef`` and ``none`` can share a sweep.

Layout: the mesh stays 1-D over ``"clients"``; each device trains its share of
every configuration's cohort (the config axis is vmapped inside the device
share, clients stay sharded), so results stay invariant to the device count.
The chunk size accounts for the config axis: a chunk of ``c`` clients now holds
``S x c`` client working sets, so the automatic chunk is the single-config one
divided by S (at least 1). Per-client states live replicated (``[S, C, ...]``
on every device).
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxqfl.aggregate.base import check_aggregator
from jaxqfl.compress.identity import identity
from jaxqfl.data.population import Population
from jaxqfl.engine.evaluation import build_evaluate
from jaxqfl.engine.layout import check_cohort_and_chunk, client_layout, layout_for_chunk
from jaxqfl.engine.mesh import client_mesh
from jaxqfl.engine.round import round_program
from jaxqfl.engine.schedule import LocalSchedule
from jaxqfl.engine.simulation import block_compiler, default_aggregator, device_data
from jaxqfl.engine.state import initial_state
from jaxqfl.tasks import default_for


class SweepSimulation(NamedTuple):
    """A built sweep: pure functions over a config-stacked ``ServerState``."""

    init: Callable  # init() -> ServerState, every leaf [S, ...]
    run_block: Callable  # run_block(states, num_rounds, num_active=None) -> (states, RoundMetrics [R, S, ...])
    compile_block: Callable  # compile_block(num_rounds) -> seconds (cached)
    evaluate: Callable  # evaluate(states) -> [S] list of test-metric dicts
    trace_count: Callable
    configs: tuple  # the S config dicts ({"seed": ..., hyper-parameters ...})
    num_devices: int
    chunk_size: int
    cohort_size: int
    clients_per_device: int
    num_params: int


class SweepVariant(NamedTuple):
    """What a group of a sweep's configs shares at compile time: one copy of the round.

    ``make_uplink(hp)`` / ``make_downlink(hp)`` return the group's codec (``None``: float32)
    from the config's traced hyper-parameters; ``make_aggregator(hp)`` its aggregator
    (``None``: the sweep's ``make_aggregator``).
    """

    model: Any
    make_uplink: Callable[[dict], Any] = lambda hp: None
    make_downlink: Callable[[dict], Any] = lambda hp: None
    make_aggregator: Callable[[dict], Any] | None = None


def slotted(codecs: Sequence[Any], params_like) -> list:
    """Each codec with the per-client state of ALL of them: a tuple with one slot per codec.

    Codec ``v`` reads and writes slot ``v`` only; the other slots pass through. So variants
    with different codec states (``+ef`` and none) keep one state structure. ``None``
    (float32 updates) becomes ``identity()`` (the same values and bits) unless every codec is ``None``.
    """
    if len(codecs) == 1 or all(c is None for c in codecs):
        return list(codecs)
    codecs = [identity() if c is None else c for c in codecs]  # float32: the identity codec, same values and bits
    if all(jax.tree.leaves(jax.eval_shape(c.init, params_like)) == [] for c in codecs):
        return codecs
    inits = [c.init for c in codecs]

    def init(params):
        return tuple(i(params) for i in inits)

    out = []
    for v, c in enumerate(codecs):
        def encode(delta, states, key, c=c, v=v):
            message, state = c.encode(delta, states[v], key)
            return message, states[:v] + (state,) + states[v + 1:]

        out.append(c._replace(init=init, encode=encode))
    return out


def grid(seeds: Sequence[int], **values: Sequence[float]) -> list[dict]:
    """The Cartesian product of hyper-parameter values and seeds, seeds varying fastest.

    ``grid([0, 1], client_lr=[0.1, 0.3])`` ->
    ``[{"client_lr": 0.1, "seed": 0}, {"client_lr": 0.1, "seed": 1}, {"client_lr": 0.3, "seed": 0}, ...]``.
    """
    names = list(values)
    configs = []
    for combo in itertools.product(*(values[n] for n in names)):
        for seed in seeds:
            configs.append({**dict(zip(names, combo)), "seed": seed})
    return configs


def check_configs(configs: Sequence[Mapping[str, Any]]) -> tuple[tuple[dict, ...], tuple[str, ...]]:
    """Refuse an empty sweep, configs with different keys, a bad seed or a non-finite value."""
    configs = tuple(dict(c) for c in configs)
    if not configs:
        raise ValueError("a sweep needs at least one config")
    names = tuple(sorted(k for k in configs[0] if k != "seed"))
    for i, c in enumerate(configs):
        if tuple(sorted(k for k in c if k != "seed")) != names or "seed" not in c:
            raise ValueError(f"every config needs the keys seed and {list(names)}; config {i} has {sorted(c)}")
        if not isinstance(c["seed"], (int, np.integer)) or c["seed"] < 0:
            raise ValueError(f"config {i}: seed must be a non-negative integer, got {c['seed']!r}")
        for n in names:
            if not np.isfinite(float(c[n])):
                raise ValueError(f"config {i}: {n} must be a finite number, got {c[n]!r}")
    seen = {}  # the round computes in float32: configs equal there are one config run twice
    for i, c in enumerate(configs):
        key = (int(c["seed"]),) + tuple(float(np.float32(c[n])) for n in names)
        if key in seen:
            raise ValueError(f"configs {seen[key]} and {i} are the same ({configs[seen[key]]} and {c}, to float32 "
                             f"precision); give distinct values")
        seen[key] = i
    return configs, names


def variant_groups(configs: Sequence[Mapping[str, Any]], num_variants: int) -> list[np.ndarray]:
    """Each variant's config indices (every variant needs at least one config); one group without variants."""
    if num_variants == 1 and "variant" not in configs[0]:
        return [np.arange(len(configs))]
    of = [c.get("variant") for c in configs]
    bad = [v for v in of if isinstance(v, bool) or not float(v).is_integer() or not 0 <= v < num_variants]
    if bad:
        raise ValueError(f"config key 'variant' must be an integer in [0, {num_variants - 1}], got {bad[0]!r}")
    groups = [np.flatnonzero(np.asarray(of) == v) for v in range(num_variants)]
    empty = [v for v, g in enumerate(groups) if g.size == 0]
    if empty:
        raise ValueError(f"variant {empty[0]} has no config; give every variant at least one config")
    return groups


def by_variant(fns: Sequence[Callable], groups: Sequence[np.ndarray], S: int, *, with_hp: bool = True) -> Callable:
    """``f(x, hp)`` over the config axis, variant ``v``'s configs through ``fns[v]``, results in config order.

    One variant: ``fns[0]`` itself. Several: each variant's configs sliced out (when every
    variant's configs are contiguous and in order, as ``jaxqfl.sweep_plan`` orders them) or
    gathered, run, and the outputs concatenated (and put back by the inverse permutation
    after a gather). Gathers copy every leaf of every config: with large per-client states
    (error-feedback residuals) keep each variant's configs together.
    """
    if len(fns) == 1:
        return fns[0] if with_hp else (lambda x: fns[0](x, None))
    order = np.concatenate(groups)
    inverse = np.argsort(order)
    contiguous = bool(np.all(order == np.arange(S)))  # variants in config order: slices, no gathers

    def take(tree, idx):
        if contiguous:  # a static slice: a view of the configs, not a gather of every leaf
            return jax.tree.map(lambda a: a[int(idx[0]):int(idx[-1]) + 1], tree)
        return jax.tree.map(lambda a: a[idx], tree)

    def run(x, hp=None):
        outs = [f(take(x, idx), None if hp is None else take(hp, idx)) for f, idx in zip(fns, groups)]
        if contiguous:
            return jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *outs)
        return jax.tree.map(lambda *leaves: jnp.concatenate(leaves)[inverse], *outs)

    return run if with_hp else (lambda x: run(x))


def check_same_states(inits: Sequence[Callable], run_keys, groups) -> None:
    """Refuse variants whose states differ in structure, shapes or dtypes, naming the first difference."""
    if len(inits) == 1:
        return
    shapes = [jax.eval_shape(f, run_keys[int(g[0])]) for f, g in zip(inits, groups)]
    first = jax.tree_util.tree_flatten_with_path(shapes[0])
    for v, other in enumerate(shapes[1:], start=1):
        leaves = jax.tree_util.tree_flatten_with_path(other)
        if leaves[1] != first[1] or any(a.shape != b.shape or a.dtype != b.dtype
                                        for (_, a), (_, b) in zip(first[0], leaves[0])):
            paths_0 = {jax.tree_util.keystr(p): (a.shape, a.dtype) for p, a in first[0]}
            paths_v = {jax.tree_util.keystr(p): (a.shape, a.dtype) for p, a in leaves[0]}
            diff = sorted(set(paths_0.items()) ^ set(paths_v.items()))
            where = diff[0][0] if diff else f"{first[1]} against {leaves[1]}"
            raise ValueError(f"sweep variants 0 and {v} keep states of different structure (first difference: "
                             f"{where}); a sweep's models must have the same parameters (e.g. no lsq4 "
                             f"preset next to another): run them as separate sweeps")


def padded_schedule(schedule: LocalSchedule, configs) -> tuple[LocalSchedule, Callable[[dict], LocalSchedule]]:
    """``(static schedule, hp -> config's schedule)``: local steps padded to the sweep's maximum when swept."""
    if "local_steps" not in configs[0]:
        return schedule, lambda hp: schedule
    steps = [c["local_steps"] for c in configs]
    bad = [k for k in steps if isinstance(k, bool) or not float(k).is_integer() or k < 1]
    if bad:
        raise ValueError(f"local_steps must be positive integers, got {bad[0]!r}")
    if schedule.local_steps is None:
        raise ValueError(f"a sweep over local_steps needs a schedule in local_steps mode, got local_epochs="
                         f"{schedule.local_epochs}")
    widest = dataclasses.replace(schedule, local_steps=int(max(steps)))
    return widest, lambda hp: widest.padded(hp["local_steps"])


def build_sweep(
    population: Population,
    model,
    make_algorithm: Callable[[dict], Any],
    schedule: LocalSchedule,
    *,
    configs: Sequence[Mapping[str, Any]],
    cohort_size: int,
    make_aggregator: Callable[[dict], Any] | None = None,
    task=None,
    num_devices: int | None = None,
    chunk_size: int | None = None,
    uplink=None,
    downlink=None,
    eval_batch_size: int = 1024,
    label_transform=None,
    variants: Sequence[SweepVariant] | None = None,
    systems=None,
    deadline: float | None = None,
    stragglers: str = "wait",
) -> SweepSimulation:
    """Build S configurations of one experiment as one program (module docstring).

    Args:
      make_algorithm: ``hp -> Algorithm`` from a dict of traced float32 hyper-parameters.
      configs: S dicts, each ``{"seed": int, name: float, ...}`` with the same names (see :func:`grid`);
        ``"local_steps"`` (positive integers) sweeps the schedule's local steps, padded to their maximum;
        ``"variant"`` (with ``variants``) is the index of the config's variant.
      make_aggregator: ``hp -> Aggregator`` (default: the mean for every config). Its state
        (``ServerState.aggregator_state``) and per-client states get the config axis like every
        other leaf: DP (fixed or adaptive clip, a traced ``hp["dp_noise"]``), integer and secure
        sums, robust rules and attacks run per config.
      label_transform: ``fn(y, info) -> y`` shared by every config (``engine.build``'s).
      variants: the static groups of configs (module docstring); default one variant of
        ``model``, ``uplink``, ``downlink`` and ``make_aggregator``.
      systems / deadline / stragglers: refused: a round deadline (``engine.build``'s) is not
        available in a sweep (each config would need its own speeds in one program).
    """
    if deadline is not None or stragglers != "wait" or systems is not None:
        raise ValueError(f"a round deadline (deadline={deadline!r}, stragglers={stragglers!r}) is not available in "
                         f"a sweep: build each config with engine.build")
    if not hasattr(population, "x"):
        raise ValueError("a procedural population (jaxqfl.data.procedural) is not available in a sweep: build each "
                         "config with engine.build")
    configs, names = check_configs(configs)
    check_cohort_and_chunk(population, cohort_size, chunk_size)
    schedule, schedule_of = padded_schedule(schedule, configs)
    S = len(configs)
    make_aggregator = make_aggregator or (lambda hp: default_aggregator())
    if variants is None:
        variants = [SweepVariant(model, lambda hp: uplink, lambda hp: downlink, make_aggregator)]
        if "variant" in names:
            raise ValueError("the config key 'variant' names one of build_sweep's variants; none were given")
    variants = [v if v.make_aggregator is not None else v._replace(make_aggregator=make_aggregator)
                for v in variants]
    groups = variant_groups(configs, len(variants))
    hp_values = {n: jnp.asarray([float(c[n]) for c in configs], jnp.float32) for n in names}
    hp_first = [{n: v[int(idx[0])] for n, v in hp_values.items()} for idx in groups]
    algorithm0 = make_algorithm(hp_first[0])
    task = task or default_for(population)
    mesh = client_mesh(num_devices)
    D, C = mesh.devices.size, population.num_clients
    layout = client_layout(population, variants[0].model, algorithm0, schedule, cohort_size, D, chunk_size,
                           mesh.devices.flat[0])
    if chunk_size is None:  # S configs share each chunk's working set
        layout = layout_for_chunk(cohort_size, D, max(1, layout.chunk // S), layout.num_params)
    data = device_data(population, mesh, variants[0].model.frozen)
    replicated = NamedSharding(mesh, P())
    params_like = jax.eval_shape(variants[0].model.init, jax.random.key(0), jnp.zeros((1, *population.feature_shape)))

    def codecs_of(hp):  # every variant's codecs, slotted so that their per-client states share one structure
        ups = slotted([v.make_uplink(hp) for v in variants], params_like)
        downs = slotted([v.make_downlink(hp) for v in variants], params_like)
        return ups, downs

    def init_of(v: int):
        ups, downs = codecs_of(hp_first[v])
        return initial_state(variants[v].model, algorithm0, check_aggregator(variants[v].make_aggregator(hp_first[v])),
                             population.feature_shape, C, uplink=ups[v], downlink=downs[v])

    inits = [init_of(v) for v in range(len(variants))]
    run_keys = jnp.stack([jax.random.key(int(c["seed"])) for c in configs])
    check_same_states(inits, run_keys, groups)

    def config_round(v: int):
        def one(state, hp):
            ups, downs = codecs_of(hp)
            one_round = round_program(variants[v].model, make_algorithm(hp), variants[v].make_aggregator(hp),
                                      schedule_of(hp), task, mesh, layout, num_clients=C,
                                      max_count=population.max_count, uplink=ups[v], downlink=downs[v],
                                      label_transform=label_transform)
            return one_round(state, data)

        return jax.vmap(one)

    rounds = [config_round(v) for v in range(len(variants))]
    swept_round = by_variant(rounds, groups, S)
    traces = [0]

    def block(states, hp, num_active, *, num_rounds: int):
        traces[0] += 1

        def body(states, i):
            def skip(states):
                zeros = jax.eval_shape(lambda s: swept_round(s, hp)[1], states)
                return states, jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), zeros)._replace(
                    active=jnp.zeros((S,), bool))

            return jax.lax.cond(i < num_active, lambda s: swept_round(s, hp), skip, states)

        return jax.lax.scan(body, states, jnp.arange(num_rounds))

    def init_all(keys_):
        return by_variant([lambda k, _, f=f: jax.vmap(f)(k) for f in inits], groups, S, with_hp=False)(keys_)

    init_program = jax.jit(init_all, out_shardings=replicated)

    def init():
        return init_program(run_keys)

    def lower_block(num_rounds: int):
        def sweep_block(states, hp, n):
            return block(states, hp, n, num_rounds=num_rounds)

        fn = jax.jit(sweep_block, donate_argnums=(0,), out_shardings=replicated)
        states_abs = jax.eval_shape(init_all, run_keys)
        states_abs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), states_abs)
        return fn.lower(states_abs, hp_values, jnp.int32(num_rounds))

    compile_block, compiled = block_compiler(lower_block)

    def run_block(states, num_rounds: int, num_active: int | None = None):
        compile_block(num_rounds)
        num_active = num_rounds if num_active is None else num_active
        if not 0 <= num_active <= num_rounds:
            raise ValueError(f"num_active must lie in [0, {num_rounds}], got {num_active}")
        states = jax.device_put(states, replicated)
        return compiled[num_rounds](states, hp_values, jnp.int32(num_active))

    evaluators = [build_evaluate(population, v.model, task, mesh, eval_batch_size) for v in variants]
    variant_of = np.zeros(S, int)
    for v, idx in enumerate(groups):
        variant_of[idx] = v

    def evaluate(states) -> list[dict]:
        return [evaluators[variant_of[s]](jax.tree.map(lambda a: a[s], states.params)) for s in range(S)]

    return SweepSimulation(
        init=init, run_block=run_block, compile_block=compile_block, evaluate=evaluate,
        trace_count=lambda: traces[0], configs=configs, num_devices=D, chunk_size=layout.chunk,
        cohort_size=cohort_size, clients_per_device=layout.per_device, num_params=layout.num_params,
    )
