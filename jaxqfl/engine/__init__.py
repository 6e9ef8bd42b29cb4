"""The round engine: state, layout, client update, round, block program, evaluation, streaming.

Rooms (one concept each): ``state`` (ServerState, RoundMetrics, the initial
state), ``layout`` (devices x chunks x clients), ``chunking`` (the chunk cost
model), ``client_update`` (one client's round), ``round`` (the round program),
``straggler`` (a round deadline's plan), ``cohort_draw`` (availability and selection), ``simulation``
(build: the block program), ``host_loop`` and ``streaming`` (rounds driven from the host), ``sweep`` (many
configs in one program), ``fedbuff`` / ``fedbuff_build`` (buffered asynchronous FL), ``homes`` (where per-client
states live),
``evaluation``, ``driver`` (``run``), ``pieces`` (a block dispatched in pieces, for progress).
"""
from jaxqfl.engine.chunking import auto_chunk_size
from jaxqfl.engine.fedbuff_build import build_fedbuff
from jaxqfl.engine.driver import RunResult, RunTotals, SweepTotals, run, run_sweep
from jaxqfl.engine.homes import HOMES
from jaxqfl.engine.mesh import CLIENTS, client_mesh
from jaxqfl.engine.pieces import Progress
from jaxqfl.engine.round import CohortBlock, DeviceData, sample_cohort
from jaxqfl.engine.schedule import LocalSchedule
from jaxqfl.engine.simulation import Simulation, build
from jaxqfl.engine.state import RoundMetrics, ServerState
from jaxqfl.engine.streaming import StreamingSimulation, build_streaming
from jaxqfl.engine.sweep import SweepSimulation, SweepVariant, build_sweep, grid
from jaxqfl.engine.tiers import Tiers, draw_tiers

__all__ = [
    "CLIENTS",
    "CohortBlock",
    "DeviceData",
    "HOMES",
    "LocalSchedule",
    "Progress",
    "RunResult",
    "RunTotals",
    "RoundMetrics",
    "ServerState",
    "Simulation",
    "StreamingSimulation",
    "SweepSimulation",
    "auto_chunk_size",
    "build",
    "build_fedbuff",
    "build_streaming",
    "build_sweep",
    "SweepVariant",
    "Tiers",
    "draw_tiers",
    "client_mesh",
    "grid",
    "run",
    "run_sweep",
    "SweepTotals",
    "sample_cohort",
]
