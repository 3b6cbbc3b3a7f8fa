"""The operator's settings, set once from the command line and carried in kopf's memo."""

from __future__ import annotations

from dataclasses import dataclass

from beco_operator.rollout import SETTLE_SECONDS
from beco_operator.spec import DEFAULT_IMAGE


@dataclass(frozen=True, slots=True)
class OperatorConfig:
    node_image: str = DEFAULT_IMAGE  # nodes' image when a network names none
    resync_seconds: float = 60.0  # re-check every network this often without events
    membership_wait: float = 120.0  # longest wait for pods to load a new membership
    pod_metrics: bool = False  # read each pod's membership generation (needs pod network)
    rollout_settle: float = SETTLE_SECONDS  # a user node goes down only once all are this old
