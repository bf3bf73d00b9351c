"""state.json handling and endpoint resolution."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from sluiceway.cli import stack
from sluiceway.cli.client import NoStack, resolve_endpoints


def make_state(tmp_path: Path, procs: list[stack.ProcInfo]) -> stack.StackState:
    return stack.StackState(
        state_dir=str(tmp_path),
        nats_url="nats://127.0.0.1:1",
        control_addr="127.0.0.1:11",
        tracker_addr="127.0.0.1:12",
        nats_started=True,
        processes=procs,
    )


def test_state_round_trips(tmp_path: Path) -> None:
    st = make_state(tmp_path, [stack.ProcInfo("worker-1", "worker", 123, 1.5, "/l")])
    stack.write_state(st)
    back = stack.read_state(tmp_path)
    assert back == st
    assert back is not None and back.service_pids() == {"worker": [123]}


def test_missing_state_is_none_and_garbage_is_an_error(tmp_path: Path) -> None:
    assert stack.read_state(tmp_path) is None
    stack.state_path(tmp_path).write_text("{not json")
    with pytest.raises(stack.StackError, match="unreadable state file"):
        stack.read_state(tmp_path)


def test_endpoints_prefer_flags_then_env_then_state(tmp_path: Path) -> None:
    stack.write_state(make_state(tmp_path, []))
    ep = resolve_endpoints(tmp_path, env={})
    assert (ep.control_addr, ep.tracker_addr) == ("127.0.0.1:11", "127.0.0.1:12")
    env = {"SLUICEWAY_CONTROL_ADDR": "h:1"}
    ep = resolve_endpoints(tmp_path, env=env)
    assert (ep.control_addr, ep.tracker_addr) == ("h:1", "127.0.0.1:12")
    ep = resolve_endpoints(tmp_path, control="c:2", tracker="t:3", env=env)
    assert (ep.control_addr, ep.tracker_addr) == ("c:2", "t:3")


def test_no_state_and_no_env_means_no_stack(tmp_path: Path) -> None:
    with pytest.raises(NoStack, match="no stack is running"):
        resolve_endpoints(tmp_path, env={})


def test_a_reused_pid_is_not_ours(tmp_path: Path) -> None:
    me = psutil.Process(os.getpid())
    assert stack.is_alive(stack.ProcInfo("x", "x", me.pid, me.create_time()))
    # same pid, another creation time: the kernel gave the pid to someone else
    assert not stack.is_alive(stack.ProcInfo("x", "x", me.pid, me.create_time() - 100))


def test_down_stops_recorded_process_groups_and_removes_state(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        info = stack.ProcInfo(
            "planner-1", "planner", child.pid, psutil.Process(child.pid).create_time()
        )
        stack.write_state(make_state(tmp_path, [info]))
        stopped = stack.down(tmp_path, timeout_s=5)
        assert stopped is not None
        assert child.wait(timeout=5) is not None
        assert not stack.state_path(tmp_path).exists()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_up_refuses_when_a_recorded_stack_is_alive(tmp_path: Path) -> None:
    me = psutil.Process(os.getpid())
    stack.write_state(
        make_state(tmp_path, [stack.ProcInfo("tracker-1", "tracker", me.pid, me.create_time())])
    )
    with pytest.raises(stack.StackError, match="already running"):
        stack.start_stack(tmp_path, workers=1)
    assert stack.state_path(tmp_path).exists()
