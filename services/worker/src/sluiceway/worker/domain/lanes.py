"""Which priority lane a worker takes its next chunk task from: higher priority first, and
age raises priority so that no lane starves.

effective(lane) = lane priority + floor(age of its oldest waiting task / aging step)

A worker takes from the non-empty lane with the highest effective priority; on a tie, the
lane of higher priority. With the default step of 60 s, a low-priority task that has waited
two minutes competes with fresh high-priority ones, and wins after three."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LaneState:
    priority: int  # PRIORITY_LOW | PRIORITY_NORMAL | PRIORITY_HIGH
    waiting: int  # tasks not yet handed to any worker
    oldest_age_s: float = 0.0  # how long the oldest of them has waited


def effective_priority(priority: int, age_s: float, aging_s: float) -> int:
    return priority + math.floor(max(0.0, age_s) / aging_s)


def lane_order(lanes: list[LaneState], aging_s: float) -> list[LaneState]:
    """The lanes with waiting tasks, best first."""
    waiting = [lane for lane in lanes if lane.waiting > 0]
    return sorted(
        waiting,
        key=lambda lane: (
            effective_priority(lane.priority, lane.oldest_age_s, aging_s),
            lane.priority,
        ),
        reverse=True,
    )
