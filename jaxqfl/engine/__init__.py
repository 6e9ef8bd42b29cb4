"""The round engine: state, layout, client update, round, block program, evaluation, streaming.

Rooms (one concept each): ``state`` (ServerState, RoundMetrics, the initial
state), ``layout`` (devices x chunks x clients), ``chunking`` (the chunk cost
model), ``client_update`` (one client's round), ``round`` (the round program),
``simulation`` (build: the block program), ``host_loop`` and ``streaming``
(rounds driven from the host), ``homes`` (where per-client states live),
``evaluation``, ``driver`` (``run``).
"""
from jaxqfl.engine.chunking import auto_chunk_size
from jaxqfl.engine.driver import RunResult, RunTotals, run
from jaxqfl.engine.homes import HOMES
from jaxqfl.engine.mesh import CLIENTS, client_mesh
from jaxqfl.engine.round import CohortBlock, DeviceData, sample_cohort
from jaxqfl.engine.schedule import LocalSchedule
from jaxqfl.engine.simulation import Simulation, build
from jaxqfl.engine.state import RoundMetrics, ServerState
from jaxqfl.engine.streaming import StreamingSimulation, build_streaming

__all__ = [
    "CLIENTS",
    "CohortBlock",
    "DeviceData",
    "HOMES",
    "LocalSchedule",
    "RunResult",
    "RunTotals",
    "RoundMetrics",
    "ServerState",
    "Simulation",
    "StreamingSimulation",
    "auto_chunk_size",
    "build",
    "build_streaming",
    "client_mesh",
    "run",
    "sample_cohort",
]
