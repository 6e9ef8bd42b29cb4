"""Systems heterogeneity (issue 27): per-client device speed and link bandwidth, the virtual clock, deadlines,
client availability (``availability``) and client selection (``selection``)."""
from jaxqfl.systems import availability, selection
from jaxqfl.systems.clock import ClientSystems, block_seconds, draw_lognormal_systems, round_seconds
from jaxqfl.systems.deadline import STRAGGLERS, DeadlinePlan, check_deadline, plan_round
from jaxqfl.systems.profile_file import load_systems_csv

__all__ = ["ClientSystems", "DeadlinePlan", "STRAGGLERS", "availability", "block_seconds", "check_deadline",
           "draw_lognormal_systems", "load_systems_csv", "plan_round", "round_seconds", "selection"]
