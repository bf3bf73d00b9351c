"""`sluiceway`: start a local stack and submit, plan, follow and inspect export runs."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import getpass
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console

from sluiceway.cli import plans, render, schedule, tokens
from sluiceway.cli import stack as stackmod
from sluiceway.cli.client import NoStack, connect, resolve_endpoints
from sluiceway.client import Client, SluicewayError
from sluiceway.common import codec
from sluiceway.common.config import ConfigError, load_file, select
from sluiceway.common.domain.events import PRIORITIES, ExportSpec
from sluiceway.common.tlsfiles import TlsError
from sluiceway.v1 import events_pb2, tracker_pb2

EXIT_OK = 0
EXIT_ERROR = 1  # config, usage, no stack, a run failed for good, canceled, generic errors
EXIT_RETRYABLE = 2  # may pass on retry: retries spent on retryable errors, services unreachable
EXIT_DATA = 3  # data integrity: validation or reconciliation failed (`validate`: bad data)
EXIT_SCHEMA = 4  # schema drift failed the run

EPILOG = """exit codes (docs/cli.md):
  0  success (`run --wait`: the run SUCCEEDED or was SKIPPED)
  1  configuration, usage or generic error (no stack is running, the run failed on a
     permanent error or was canceled; `validate`: PATH could not be checked)
  2  retryable: the run failed on errors that may pass on retry, or the services could not
     be reached
  3  data integrity: validation or reconciliation failed (`validate`: the data is wrong)
  4  schema drift failed the run
"""


# One example per help screen: `sluiceway <command> --help` ends with it (a test runs every
# help screen and checks that each has one).
EXAMPLES = {
    "": "sluiceway init --table public.orders --source-env SHOP_DB_URL -o orders.yaml\n"
    "  sluiceway doctor -c orders.yaml\n"
    "  sluiceway up --detach && sluiceway run -c orders.yaml --wait",
    "init": "sluiceway init --table public.orders --source-env SHOP_DB_URL -o orders.yaml\n"
    "  sluiceway init --table customers --sqlite shop.db -o customers.yaml",
    "doctor": "sluiceway doctor -c orders.yaml --export orders",
    "up": "sluiceway up --detach --workers 4",
    "down": "sluiceway down",
    "run": "sluiceway run -c orders.yaml --export orders --wait",
    "plan": "sluiceway plan -c orders.yaml -o orders.plan.json --expires-in 1h",
    "apply": "sluiceway apply orders.plan.json",
    "types": "sluiceway types -c orders.yaml --export orders",
    "runs": "sluiceway runs --export orders --status FAILED --limit 5",
    "status": "sluiceway status 01J9Z3K2RQ8W6T5V4X3Y2Z1A0B --json",
    "events": "sluiceway events 01J9Z3K2RQ8W6T5V4X3Y2Z1A0B",
    "watch": "sluiceway watch 01J9Z3K2RQ8W6T5V4X3Y2Z1A0B",
    "validate": "sluiceway validate exports/orders/manifest.json",
    "cancel": "sluiceway cancel 01J9Z3K2RQ8W6T5V4X3Y2Z1A0B --reason 'wrong window' --wait",
    "rebuild-tracker": "sluiceway rebuild-tracker --db .sluiceway/tracker.duckdb",
    "schedule": "sluiceway schedule apply -c orders.yaml",
    "schedule apply": "sluiceway schedule apply -c orders.yaml --json",
    "schedule list": "sluiceway schedule list --next 5",
    "token": "sluiceway token new --file principals.yaml --principal alice --role operator "
    "--team payments --expires-in 90d",
    "token new": "sluiceway token new --file principals.yaml --principal alice --role operator "
    "--team payments --expires-in 90d",
    "token revoke": "sluiceway token revoke --file principals.yaml --id 3f9a2c1d04be",
    "token list": "sluiceway token list --file principals.yaml",
}


def _add_examples(parser: argparse.ArgumentParser, path: str = "") -> None:
    """Put each command's example at the top of its epilog, recursively."""
    example = EXAMPLES[path]
    label = "examples" if "\n" in example else "example"
    parser.epilog = f"{label}:\n  {example}" + (f"\n\n{parser.epilog}" if parser.epilog else "")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                _add_examples(child, f"{path} {name}".strip())


class Failure(Exception):
    """A one-line error and its exit code."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 1 (argparse's default is 2)
        raise Failure(f"{self.prog}: {message}", EXIT_ERROR)


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--state-dir",
        default=os.environ.get("SLUICEWAY_STATE_DIR", ".sluiceway"),
        help="where `up` keeps state.json, logs and data (default ./.sluiceway)",
    )
    remote = _Parser(add_help=False)
    remote.add_argument(
        "--control", help="planner address host:port (else SLUICEWAY_CONTROL_ADDR, else state.json)"
    )
    remote.add_argument(
        "--tracker", help="tracker address host:port (else SLUICEWAY_TRACKER_ADDR, else state.json)"
    )

    p = _Parser(
        prog="sluiceway",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    up = sub.add_parser("up", parents=[common], help="start nats-server and the services")
    up.add_argument("--detach", action="store_true", help="return once every service is ready")
    up.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    up.add_argument("--nats-url", help="use this NATS server instead of starting one")

    sub.add_parser("down", parents=[common], help="stop the stack started by `up`")

    run = sub.add_parser(
        "run",
        parents=[common, remote],
        help="submit a run",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("-c", "--config", required=True, help="YAML config file")
    run.add_argument("--export", default="", help="export name (optional with one export)")
    run.add_argument("--wait", action="store_true", help="follow the run to its end")
    run.add_argument("--json", action="store_true", help="print JSON instead of text")
    run.add_argument(
        "--priority",
        choices=sorted(PRIORITIES),
        help="this run's priority (default: the export's `priority:`, else normal)",
    )

    plan = sub.add_parser("plan", parents=[common, remote], help="show the plan (dry run)")
    plan.add_argument("-c", "--config", required=True, help="YAML config file")
    plan.add_argument("--export", default="", help="export name (optional with one export)")
    plan.add_argument("-o", "--output", default="", help="write a sealed plan file for `apply`")
    plan.add_argument(
        "--expires-in",
        default=plans.DEFAULT_EXPIRES_IN,
        help=f"the sealed plan's lifetime, e.g. 90s, 15m, 24h (default {plans.DEFAULT_EXPIRES_IN})",
    )

    apply = sub.add_parser(
        "apply",
        parents=[common, remote],
        help="run a sealed plan (`plan -o`) and follow it; exits as `run --wait`",
        epilog="A tampered plan is always refused; a stale one (past its expiry) or one whose "
        "export cursor moved since planning only with --force (recorded in the run's "
        "apply_context). A refused plan exits 1.\n\n" + EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    apply.add_argument("plan_file", metavar="PLAN", help="a plan file written by `plan -o`")
    apply.add_argument(
        "--force", action="store_true", help="apply a stale plan or one whose cursor moved"
    )
    apply.add_argument("--json", action="store_true", help="print the RunSummary as JSON")

    types = sub.add_parser(
        "types",
        help="each column's source, Arrow and Parquet type (introspects the source from here)",
    )
    types.add_argument("-c", "--config", required=True, help="YAML config file")
    types.add_argument("--export", default="", help="export name (optional with one export)")
    types.add_argument("--json", action="store_true", help="print JSON instead of text")

    runs = sub.add_parser("runs", parents=[common, remote], help="list runs, newest first")
    runs.add_argument("--export", default="", help="only this export")
    runs.add_argument(
        "--status",
        action="append",
        default=[],
        help="only this status (repeatable), e.g. SUCCEEDED",
    )
    runs.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    runs.add_argument(
        "--upcoming", action="store_true", help="scheduled and ready runs, soonest first"
    )
    schedule.add_parsers(sub, common, remote)
    tokens.add_parsers(sub)

    status = sub.add_parser("status", parents=[common, remote], help="a run's summary")
    status.add_argument("run_id")
    status.add_argument("--json", action="store_true", help="print the RunSummary as JSON")

    events = sub.add_parser("events", parents=[common, remote], help="a run's events")
    events.add_argument("run_id")

    watch = sub.add_parser("watch", parents=[common, remote], help="follow a run's events live")
    watch.add_argument("run_id")

    validate = sub.add_parser(
        "validate",
        help="check a committed run on disk: manifest, _SUCCESS, every part's bytes and rows",
        epilog="PATH: a run directory, its manifest.json, or <dest>/<export>/manifest.json "
        "(the latest pointer). Exit 0 verified, 3 the data is wrong, 1 could not check.",
    )
    validate.add_argument("path", metavar="PATH")
    validate.add_argument("--json", action="store_true", help="print the report as JSON")
    validate.add_argument(
        "--depth",
        choices=("files", "full"),
        default="files",
        help="files: sizes, fingerprints and row counts (default); full: also every Parquet "
        "column's values against the manifest's column checksums",
    )

    cancel = sub.add_parser(
        "cancel",
        parents=[common, remote],
        help="cancel a run: pending chunks never start, running ones stop at a batch boundary",
    )
    cancel.add_argument("run_id")
    cancel.add_argument("--reason", default="", help="why (recorded in the run's events)")
    cancel.add_argument(
        "--wait", action="store_true", help="wait for the run to end; exit 0 if it was canceled"
    )

    rebuild_tracker = sub.add_parser(
        "rebuild-tracker",
        parents=[common],
        help="rebuild the tracker's DuckDB read model from the run stream (tracker stopped)",
    )
    rebuild_tracker.add_argument(
        "--db",
        default="",
        help="DuckDB file (default: SLUICEWAY_TRACKER_DB, else <state-dir>/tracker.duckdb)",
    )

    init = sub.add_parser(
        "init",
        help="write a starting config for one table, from its schema and size",
        description="Connects to the source, reads the table's columns, size and primary key, "
        "and writes a config whose mode fits: `full` for a small table, `chunked` on an integer "
        "primary key for a large one. The written file is checked before it is written.",
    )
    init.add_argument("--table", required=True, help="the table, e.g. public.orders")
    src = init.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--source-env",
        metavar="VAR",
        help="environment variable holding a PostgreSQL or MySQL/MariaDB URL (its scheme "
        "picks the engine)",
    )
    src.add_argument("--sqlite", metavar="PATH", help="a SQLite database file")
    init.add_argument("--name", default="", help="export name (default: the table's name)")
    init.add_argument(
        "--destination", default="exports", help="where runs are written (default ./exports)"
    )
    init.add_argument(
        "-o", "--output", default="sluiceway.yaml", help="file to write ('-': stdout)"
    )
    init.add_argument("--force", action="store_true", help="overwrite an existing file")

    doctor = sub.add_parser(
        "doctor",
        parents=[common, remote],
        help="check that each export of a config can run: source, permissions, destination, stack",
        description="For each export: the config and its url_env variable (named, never "
        "printed), the source's reachability and the table's SELECT permission, the "
        "destination's writability; then the stack's health. Exit 0 all ready, 1 an export "
        "is not ready, 2 only the stack is unreachable.",
    )
    doctor.add_argument("-c", "--config", required=True, help="YAML config file")
    doctor.add_argument("--export", default="", help="only this export")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_examples(p)
    return p


# ---- helpers -------------------------------------------------------------------------------------


def _stdout() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _client(args: argparse.Namespace) -> Client:
    try:
        return connect(
            resolve_endpoints(args.state_dir, control=args.control, tracker=args.tracker)
        )
    except (NoStack, stackmod.StackError, TlsError) as exc:
        raise Failure(str(exc), EXIT_ERROR) from None


def grpc_failure(err: SluicewayError) -> Failure:
    """`error: <CODE>: <server's message>`; exit 2 when the services could not be reached."""
    unreachable = err.code.name in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    return Failure(f"error: {err}", EXIT_RETRYABLE if unreachable else EXIT_ERROR)


def load_config(path: str, export: str) -> ExportSpec:
    """Check the config locally (every error is one line naming file, export and field) and
    resolve the export: paths absolute, a query_file read. The url_env variables must be set
    here, because the services inherit this environment."""
    specs = load_file(path, env=os.environ)
    return select(specs, export or None, file_name=path)


def parse_statuses(names: Sequence[str]) -> list[events_pb2.RunStatus]:
    out = []
    for n in names:
        key = "RUN_STATUS_" + n.strip().upper().removeprefix("RUN_STATUS_")
        if key not in events_pb2.RunStatus.keys():
            valid = ", ".join(
                k.removeprefix("RUN_STATUS_") for k in events_pb2.RunStatus.keys()[1:]
            )
            raise Failure(f"unknown status {n!r} (expected one of: {valid})")
        out.append(events_pb2.RunStatus.Value(key))
    return out


def follow(
    client: Client, run_id: str, *, min_seq: int, console: Console, quiet: bool = False
) -> tracker_pb2.RunSummary:
    """Watch a run to its end with a progress display; return its final summary."""
    if quiet:
        return client.wait(run_id, min_seq=min_seq)
    # wait until the tracker has projected our RunRequested (read your own write)
    client.get(run_id, min_seq=min_seq, wait_s=60.0)
    last = min_seq
    with render.RunProgress(run_id, console) as progress:
        for stored in client.watch(run_id):  # from the start: the display needs the plan
            last = stored.seq
            progress.update(stored)
    return client.wait(run_id, min_seq=last)


def exit_for(summary: tracker_pb2.RunSummary) -> int:
    """The exit code of `run --wait` (and `watch`) for a run's final summary."""
    status = summary.status
    if status in (events_pb2.RUN_STATUS_SUCCEEDED, events_pb2.RUN_STATUS_SKIPPED):
        return EXIT_OK
    if status == events_pb2.RUN_STATUS_CANCELED:
        return EXIT_ERROR
    if status != events_pb2.RUN_STATUS_FAILED:
        return EXIT_RETRYABLE  # not ended in time: the tracker lags or cannot be reached
    cause = summary.failure_cause
    if cause in ("validation", "quality", "reconciliation") or (
        summary.manifest_verification == "failed"
    ):
        return EXIT_DATA
    if cause == "schema_drift":
        return EXIT_SCHEMA
    if cause in ("chunk_retries_spent", "expired"):
        return EXIT_RETRYABLE
    return EXIT_ERROR  # planning, a permanent chunk error, anything else


def cancel_exit_for(summary: tracker_pb2.RunSummary) -> int:
    """`cancel --wait`: 0 when the run was canceled; a run that failed anyway exits as
    `run --wait` would; one that succeeded before the cancel took hold is an error (1)."""
    if summary.status == events_pb2.RUN_STATUS_CANCELED:
        return EXIT_OK
    code = exit_for(summary)
    return EXIT_ERROR if code == EXIT_OK else code


# ---- commands ------------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    err = _stderr()
    try:
        stack = stackmod.start_stack(
            args.state_dir,
            workers=args.workers,
            nats_url=args.nats_url,
            on_progress=lambda m: err.print(m, markup=False),
        )
    except stackmod.StackError as exc:
        if exc.detail:
            print(exc.detail, file=sys.stderr)
        raise Failure(str(exc), EXIT_ERROR) from None
    st = stack.state
    out = _stdout()
    out.print(f"nats:    {st.nats_url}", markup=False)
    out.print(f"control: {st.control_addr}", markup=False)
    out.print(f"tracker: {st.tracker_addr}", markup=False)
    pids = ", ".join(f"{p.name}={p.pid}" for p in st.processes)
    out.print(f"pids:    {pids}", markup=False)
    out.print(f"state:   {stackmod.state_path(st.state_dir)}", markup=False)
    if args.detach:
        return EXIT_OK

    stopping = False

    def _stop(_sig: int, _frm: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    out.print("running; press Ctrl-C to stop", markup=False)
    code = EXIT_OK
    try:
        while not stopping:
            dead = stack.dead()
            if dead:
                for d in dead:
                    print(f"error: {d.name} exited (log: {d.log})", file=sys.stderr)
                    print(stackmod.log_tail(d.log), file=sys.stderr)
                code = EXIT_ERROR
                break
            time.sleep(0.5)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        err.print("stopping", markup=False)
        stack.stop()
    return code


def cmd_down(args: argparse.Namespace) -> int:
    state = stackmod.read_state(args.state_dir)
    if state is None:
        print(f"no stack is running in {args.state_dir}", file=sys.stderr)
        return EXIT_OK
    killed = stackmod.stop_state(state)
    stackmod.state_path(args.state_dir).unlink(missing_ok=True)
    msg = f"stopped {len(state.processes)} processes"
    if killed:
        msg += " (killed: " + ", ".join(p.name for p in killed) + ")"
    print(msg)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    spec = load_config(args.config, args.export)
    with _client(args) as client:
        priority = PRIORITIES[args.priority] if args.priority else 0
        resp = client.submit(spec, requested_by=_user(), priority=priority)
        if not args.wait:
            if args.json:
                print(
                    json.dumps(
                        {
                            "run_id": resp.run_id,
                            "export_name": resp.export_name,
                            "stream_seq": resp.stream_seq,
                        }
                    )
                )
            else:
                print(resp.run_id)
            return EXIT_OK
        if not args.json:
            print(f"run {resp.run_id} ({resp.export_name})", flush=True)
        summary = follow(client, resp.run_id, min_seq=resp.stream_seq, console=_stderr())
    if args.json:
        print(render.summary_json(summary))
    else:
        render.print_card(summary, _stdout())
    return exit_for(summary)


def cmd_plan(args: argparse.Namespace) -> int:
    spec = load_config(args.config, args.export)
    try:
        expires_in = plans.parse_duration(args.expires_in)
    except ValueError as exc:
        raise Failure(f"--expires-in: {exc}") from None
    with _client(args) as client:
        resp = client.plan(spec)
    print(render.plan_text(resp))
    if args.output:
        spec_pb = resp.spec if resp.spec.name else codec.to_message(spec, events_pb2.ExportSpec())
        doc = plans.build(resp, spec_pb, now=_now(), expires_in=expires_in, key=_plan_key())
        Path(args.output).write_text(plans.dumps(doc), encoding="utf-8")
        print(
            f"sealed plan {doc['plan_id']} written to {args.output} (expires {doc['expires_at']})"
        )
    return EXIT_OK


def cmd_apply(args: argparse.Namespace) -> int:
    """Run exactly a sealed plan: checks here (tamper, expiry, cursor via a dry run), then
    SubmitRun pinned to the plan's id; the planner re-plans and refuses a run that plans
    otherwise (the authority: it also covers what changes between this check and the run)."""
    try:
        text = Path(args.plan_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise Failure(f"error: cannot read plan {args.plan_file}: {exc}") from None
    key = _plan_key()
    try:
        doc = plans.loads(text)
        plans.verify_integrity(doc, key)  # before anything in the file is used
        spec_pb = plans.spec_of(doc)
        spec = codec.from_message(spec_pb, ExportSpec)
        with _client(args) as client:
            current = None
            if spec.mode == "incremental":  # the cursor now (the planner reads Bus.last_commit)
                current = plans.cursor_of(client.plan(spec).plan, spec.mode)
            bypassed = plans.decide(
                doc,
                now=_now(),
                current_cursor=current,
                force=args.force,
                key=key,
            )
            options = plans.submit_options(doc, force=args.force, bypassed=bypassed)
            resp = client.submit(spec, requested_by=_user(), options=options)
            if not args.json:
                note = f", forced past: {', '.join(bypassed)}" if bypassed else ""
                print(f"run {resp.run_id} ({resp.export_name}) applies plan {doc['plan_id']}{note}")
            summary = follow(client, resp.run_id, min_seq=resp.stream_seq, console=_stderr())
    except plans.PlanRefused as exc:
        raise Failure(f"refused ({exc.reason}): {exc}") from None
    if args.json:
        print(render.summary_json(summary))
    else:
        render.print_card(summary, _stdout())
    return exit_for(summary)


def cmd_types(args: argparse.Namespace) -> int:
    """The type mapping of one export, from the source itself (the URL from url_env here)."""
    from sluiceway.cli import types as typesmod  # pyarrow and the drivers: this command only
    from sluiceway.cli.doctor import located, source_problem
    from sluiceway.common.sources import SourceError

    specs = load_file(args.config, env=os.environ)
    spec = select(specs, args.export or None, file_name=args.config)
    try:
        rows = typesmod.describe_export(spec, os.environ)
    except SourceError as exc:
        problem = located(args.config, spec, *source_problem(spec, exc))
        raise Failure(f"error: {problem}") from None
    engine = spec.source.engine
    print(typesmod.render_json(rows) if args.json else typesmod.render_text(rows, engine))
    return EXIT_OK


def cmd_runs(args: argparse.Namespace) -> int:
    statuses = parse_statuses(args.status)
    if args.limit < 1:
        raise Failure("--limit must be at least 1")
    if args.upcoming:
        return schedule.cmd_upcoming(args, _client)
    with _client(args) as client:
        runs = list(client.iter_runs(export_name=args.export, statuses=statuses, limit=args.limit))
    if not runs:
        print("no runs")
        return EXIT_OK
    Console(highlight=False, width=max(120, Console().width)).print(render.runs_table(runs))
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        summary = client.get(args.run_id)
    if args.json:
        print(render.summary_json(summary))
    else:
        render.print_card(summary, _stdout())
    return EXIT_OK


def cmd_events(args: argparse.Namespace) -> int:
    with _client(args) as client:
        for stored in client.iter_events(args.run_id, page_size=1000):
            print(render.event_line(stored))
    return EXIT_OK


def cmd_watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        for stored in client.watch(args.run_id):
            print(render.event_line(stored), flush=True)
        summary = client.get(args.run_id, wait_s=10.0)
    return exit_for(summary)


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        resp = client.cancel(args.run_id, reason=args.reason, requested_by=_user())
        print(f"cancel requested for run {resp.run_id}")
        if not args.wait:
            return EXIT_OK
        summary = follow(
            client, args.run_id, min_seq=resp.stream_seq, console=_stderr(), quiet=True
        )
    render.print_card(summary, _stdout())
    return cancel_exit_for(summary)


def cmd_validate(args: argparse.Namespace) -> int:
    from sluiceway.cli import validate  # imported here: pyarrow is only needed by this command

    try:
        code, text = validate.run(args.path, as_json=args.json, depth=args.depth)
    except validate.CannotCheck as exc:
        raise Failure(str(exc), EXIT_ERROR) from None
    print(text)
    return code


def cmd_rebuild_tracker(args: argparse.Namespace) -> int:
    """The same rebuild as `python -m sluiceway.tracker rebuild`; NATS from SLUICEWAY_NATS_URL,
    else from the stack that `up` recorded."""
    # imported here: only this command needs the tracker's DuckDB/Arrow stack
    from sluiceway.common.settings import Settings, SettingsError
    from sluiceway.tracker.rebuild import RebuildError, run_rebuild

    env = dict(os.environ)
    if not env.get("SLUICEWAY_NATS_URL"):
        state = stackmod.read_state(args.state_dir)
        if state is not None and state.nats_url:
            env["SLUICEWAY_NATS_URL"] = state.nats_url
            env.update(stackmod.nats_user_env(state, "tracker"))  # it reads as the tracker
    try:
        settings = Settings.from_env(env)
    except SettingsError as exc:
        raise Failure(f"error: {exc}") from None
    db = args.db or env.get("SLUICEWAY_TRACKER_DB") or str(Path(args.state_dir) / "tracker.duckdb")
    try:
        run_rebuild(settings, db)
    except RebuildError as exc:
        raise Failure(f"error: {exc}") from None
    return EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    from sluiceway.cli import init  # the drivers: this command only

    out = Path(args.output) if args.output != "-" else None
    if out is not None and out.exists() and not args.force:
        raise Failure(f"error: -o: {out} exists (--force to overwrite it)")
    try:
        text, choice = init.build(
            table=args.table,
            source_env=args.source_env or "",
            sqlite_path=args.sqlite or "",
            name=args.name,
            destination=args.destination,
        )
    except init.InitError as exc:
        raise Failure(f"error: {exc}") from None
    if out is None:
        sys.stdout.write(text)
        return EXIT_OK
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise Failure(f"error: -o: cannot write {out}: {exc.strerror or exc}") from None
    print(f"wrote {out}: {choice.mode} export ({choice.why})", file=sys.stderr)
    print(f"next: sluiceway doctor -c {out}", file=sys.stderr)
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from sluiceway.cli import doctor  # the drivers: this command only

    def stack() -> list[doctor.Check]:
        try:
            ends = resolve_endpoints(args.state_dir, control=args.control, tracker=args.tracker)
        except NoStack as exc:
            return [doctor.Check("stack", False, str(exc))]
        return doctor.check_stack(ends.control_addr, ends.tracker_addr)

    report = doctor.diagnose(args.config, only=args.export, stack=stack)
    if args.json:
        print(json.dumps(dataclasses.asdict(report) | {"ready": report.ready}, indent=2))
    else:
        print(doctor.render(report))
    if report.config_error or not all(e.ready for e in report.exports):
        return EXIT_ERROR
    return EXIT_OK if all(c.ok for c in report.stack) else EXIT_RETRYABLE


COMMANDS = {
    "init": cmd_init,
    "doctor": cmd_doctor,
    "up": cmd_up,
    "down": cmd_down,
    "run": cmd_run,
    "plan": cmd_plan,
    "apply": cmd_apply,
    "types": cmd_types,
    "runs": cmd_runs,
    "status": cmd_status,
    "events": cmd_events,
    "watch": cmd_watch,
    "cancel": cmd_cancel,
    "validate": cmd_validate,
    "rebuild-tracker": cmd_rebuild_tracker,
    "schedule": lambda args: schedule.cmd_schedule(args, _client),
    "token": tokens.cmd_token,
}


def _now() -> datetime:
    return datetime.now(UTC)


def _plan_key() -> bytes | None:
    return os.environ.get(plans.KEY_ENV, "").encode() or None


def _user() -> str:
    with contextlib.suppress(Exception):
        return f"cli:{getpass.getuser()}"
    return "cli"


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except Failure as exc:
        print(str(exc), file=sys.stderr)
        return exc.code
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_ERROR
    except SluicewayError as exc:
        f = grpc_failure(exc)
        print(str(f), file=sys.stderr)
        return f.code
    except stackmod.StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
