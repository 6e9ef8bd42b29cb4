"""Systems heterogeneity (issue 27): per-client device speed and link bandwidth, the virtual clock, client
availability (``availability``) and client selection (``selection``)."""
from jaxqfl.systems import availability, selection
from jaxqfl.systems.clock import ClientSystems, block_seconds, draw_lognormal_systems, round_seconds
from jaxqfl.systems.profile_file import load_systems_csv

__all__ = ["ClientSystems", "availability", "block_seconds", "draw_lognormal_systems", "load_systems_csv",
           "round_seconds", "selection"]
