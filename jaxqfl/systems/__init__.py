"""Systems heterogeneity (issue 27): per-client device speed and link bandwidth, and the virtual clock."""
from jaxqfl.systems.clock import ClientSystems, block_seconds, draw_lognormal_systems, round_seconds
from jaxqfl.systems.profile_file import load_systems_csv

__all__ = ["ClientSystems", "block_seconds", "draw_lognormal_systems", "load_systems_csv", "round_seconds"]
