"""`sluiceway schedule apply|list` and `sluiceway runs --upcoming`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from sluiceway.cli.render import status_name
from sluiceway.common.config import load_file
from sluiceway.common.domain.events import PRIORITIES
from sluiceway.v1 import control_pb2, events_pb2, tracker_pb2

PRIORITY_NAMES = {v: k for k, v in PRIORITIES.items()}
UPCOMING = (events_pb2.RUN_STATUS_SCHEDULED, events_pb2.RUN_STATUS_READY)


def add_parsers(sub: Any, common: argparse.ArgumentParser, remote: argparse.ArgumentParser) -> None:
    schedule = sub.add_parser("schedule", help="install or list export schedules")
    actions = schedule.add_subparsers(dest="schedule_command", metavar="ACTION")
    actions.required = True
    apply = actions.add_parser(
        "apply",
        parents=[common, remote],
        help="install or update the schedules of a config's exports (an export without "
        "`schedule:` has its installed schedule removed)",
    )
    apply.add_argument("-c", "--config", required=True, help="YAML config file")
    apply.add_argument("--json", action="store_true", help="print JSON instead of text")
    listing = actions.add_parser(
        "list", parents=[common, remote], help="installed schedules and their next occurrences"
    )
    listing.add_argument("--next", type=int, default=3, help="occurrences per schedule (1-50)")
    listing.add_argument("--json", action="store_true", help="print JSON instead of text")


def _priority(value: int) -> str:
    return PRIORITY_NAMES.get(value or PRIORITIES["normal"], str(value))


def _when(ts: Any) -> str:
    return str(ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC"))


def _info_json(info: control_pb2.ScheduleInfo) -> dict[str, Any]:
    s = info.spec.schedule
    return {
        "export": info.spec.name,
        "change": info.change,
        "revision": info.revision,
        "cron": s.cron,
        "timezone": s.timezone,
        "enabled": s.enabled,
        "catch_up": s.catch_up,
        "overlap": s.overlap,
        "priority": _priority(info.spec.priority),
        "next": [t.ToJsonString() for t in info.next],
    }


def schedules_table(infos: Iterable[control_pb2.ScheduleInfo], *, change: bool) -> Table:
    t = Table(box=box.SIMPLE_HEAD)
    cols = ["export", "schedule", "tz", "catch_up", "overlap", "priority", "next"]
    for col in (["change"] if change else []) + cols:
        t.add_column(col)
    for info in infos:
        s = info.spec.schedule
        cron = s.cron if s.enabled else f"{s.cron} (disabled)"
        row = [
            info.spec.name,
            cron if info.spec.HasField("schedule") else "-",
            s.timezone,
            s.catch_up,
            s.overlap,
            _priority(info.spec.priority),
            "\n".join(_when(n) for n in info.next),
        ]
        t.add_row(*([info.change] if change else []), *row)
    return t


def cmd_schedule(
    args: argparse.Namespace, client_factory: Callable[[argparse.Namespace], Any]
) -> int:
    if args.schedule_command == "apply":
        # resolved here, as `sluiceway run` does: paths absolute, query files read
        specs = load_file(args.config, env=os.environ)
        with client_factory(args) as client:
            infos = list(client.apply_schedules(specs.values(), applied_by="cli").schedules)
    else:
        if not 1 <= args.next <= 50:
            print("--next must be from 1 to 50", file=sys.stderr)
            return 1
        with client_factory(args) as client:
            infos = list(client.list_schedules(upcoming=args.next).schedules)
    if args.json:
        print(json.dumps([_info_json(i) for i in infos], indent=2))
    elif not infos:
        print("no schedules")
    else:
        table = schedules_table(infos, change=args.schedule_command == "apply")
        Console(highlight=False, width=max(120, Console().width)).print(table)
    return 0


def upcoming_table(runs: Iterable[tracker_pb2.RunSummary]) -> Table:
    t = Table(box=box.SIMPLE_HEAD)
    for col in ("run", "export", "status", "scheduled", "priority", "why"):
        t.add_column(col)
    for r in runs:
        t.add_row(
            r.run_id,
            r.export_name,
            status_name(r.status),
            _when(r.scheduled_at) if r.HasField("scheduled_at") else "",
            _priority(r.priority),
            r.waiting_reason,
        )
    return t


def cmd_upcoming(
    args: argparse.Namespace, client_factory: Callable[[argparse.Namespace], Any]
) -> int:
    """Runs that are scheduled or ready, soonest first."""
    with client_factory(args) as client:
        runs = client.list_runs(
            export_name=args.export, statuses=list(UPCOMING), page_size=args.limit
        ).runs
    if not runs:
        print("no upcoming runs")
        return 0
    far = datetime.max

    def key(r: tracker_pb2.RunSummary) -> tuple[datetime, str]:
        return (r.scheduled_at.ToDatetime() if r.HasField("scheduled_at") else far, r.run_id)

    Console(highlight=False, width=max(120, Console().width)).print(
        upcoming_table(sorted(runs, key=key))
    )
    return 0
