"""Control request bounds: an out-of-bounds field is refused by name, before anything is logged."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sluiceway.planner.adapters.servicer import (
    MAX_CONFIG_BYTES,
    MAX_OPTIONS,
    MAX_TEXT,
    request_problem,
)
from sluiceway.v1 import control_pb2 as cpb


def test_an_ordinary_request_passes() -> None:
    req = cpb.SubmitRunRequest(requested_by="ana", options={"force": "false"})
    req.config.text = "exports: []"
    assert request_problem(req) is None


def test_each_oversized_field_is_named() -> None:
    assert "requested_by" in (request_problem(cpb.SubmitRunRequest(requested_by="x" * 300)) or "")
    many = cpb.SubmitRunRequest(options={str(i): "v" for i in range(MAX_OPTIONS + 1)})
    assert "options" in (request_problem(many) or "")
    big = cpb.SubmitRunRequest()
    big.config.text = "#" * (MAX_CONFIG_BYTES + 1)
    assert "config.text" in (request_problem(big) or "")
    assert "reason" in (request_problem(cpb.CancelRunRequest(run_id="r", reason="x" * 5000)) or "")


@settings(max_examples=1000, deadline=None)
@given(
    requested_by=st.text(max_size=400),
    options=st.dictionaries(st.text(max_size=300), st.text(max_size=1100), max_size=40),
)
def test_any_submit_request_is_accepted_or_refused_with_a_named_field(
    requested_by: str, options: dict[str, str]
) -> None:
    problem = request_problem(cpb.SubmitRunRequest(requested_by=requested_by, options=options))
    within = (
        len(requested_by) <= MAX_TEXT
        and len(options) <= MAX_OPTIONS
        and all(k and len(k) <= MAX_TEXT and len(v) <= 1024 for k, v in options.items())
    )
    assert (problem is None) == within
    if problem is not None:
        assert problem.split(":")[0].split("[")[0] in ("requested_by", "options")
