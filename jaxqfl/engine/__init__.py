"""The round program: mesh, shard_map, chunked vmap, scans over steps and rounds."""
from jaxqfl.engine.chunking import auto_chunk_size
from jaxqfl.engine.driver import RunResult, run
from jaxqfl.engine.mesh import CLIENTS, client_mesh
from jaxqfl.engine.schedule import LocalSchedule
from jaxqfl.engine.simulation import DeviceData, RoundMetrics, ServerState, Simulation, build, sample_cohort
from jaxqfl.engine.streaming import StreamingSimulation, build_streaming

__all__ = [
    "CLIENTS",
    "DeviceData",
    "LocalSchedule",
    "RunResult",
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
