"""Priority lanes: higher priority first, and age raises priority so that no lane starves."""

from __future__ import annotations

from sluiceway.common.bus import LANES, Names, lane_durable
from sluiceway.common.domain.events import PRIORITY_HIGH, PRIORITY_LOW, PRIORITY_NORMAL
from sluiceway.worker.domain.lanes import LaneState, effective_priority, lane_order

STEP = 60.0


def test_a_fresh_high_priority_task_is_taken_before_older_low_ones() -> None:
    lanes = [
        LaneState(PRIORITY_LOW, waiting=40, oldest_age_s=50.0),
        LaneState(PRIORITY_NORMAL, waiting=0),
        LaneState(PRIORITY_HIGH, waiting=2, oldest_age_s=0.5),
    ]
    assert [lane.priority for lane in lane_order(lanes, STEP)] == [PRIORITY_HIGH, PRIORITY_LOW]


def test_age_raises_priority_one_level_per_step() -> None:
    assert effective_priority(PRIORITY_LOW, 0, STEP) == PRIORITY_LOW
    assert effective_priority(PRIORITY_LOW, 119.9, STEP) == PRIORITY_LOW + 1
    assert effective_priority(PRIORITY_LOW, 120, STEP) == PRIORITY_HIGH
    # a low task that waited three steps beats a fresh high one: nothing starves
    lanes = [
        LaneState(PRIORITY_HIGH, waiting=5, oldest_age_s=1.0),
        LaneState(PRIORITY_LOW, waiting=1, oldest_age_s=3 * STEP),
    ]
    assert lane_order(lanes, STEP)[0].priority == PRIORITY_LOW
    # on a tie, the lane of higher priority
    lanes[1] = LaneState(PRIORITY_LOW, waiting=1, oldest_age_s=2 * STEP)
    assert lane_order(lanes, STEP)[0].priority == PRIORITY_HIGH


def test_empty_lanes_are_never_chosen() -> None:
    assert lane_order([LaneState(PRIORITY_HIGH, waiting=0, oldest_age_s=999)], STEP) == []


def test_each_priority_has_its_own_subject_and_consumer_and_normal_keeps_the_old_ones() -> None:
    names = Names("sw")
    subjects = {names.task_lane(p) for p in LANES}
    assert subjects == {"sw.tasks.chunk", "sw.tasks.chunk.high", "sw.tasks.chunk.low"}
    assert names.task_lane(0) == names.task_lane(PRIORITY_NORMAL) == "sw.tasks.chunk"
    durables = {lane_durable("worker-chunks", p) for p in LANES}
    assert durables == {"worker-chunks", "worker-chunks-high", "worker-chunks-low"}
