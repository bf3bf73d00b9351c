"""What the CLI prints: the summary card, tables, event lines and run progress."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from typing import IO, Any

from google.protobuf import json_format
from rich import box
from rich.console import Console
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from sluiceway.common.domain.events import CHUNK_BY_PAGES
from sluiceway.v1 import control_pb2, events_pb2, tracker_pb2


def status_name(status: int) -> str:
    name = events_pb2.RunStatus.Name(status) if status in events_pb2.RunStatus.values() else "?"
    return name.removeprefix("RUN_STATUS_")


def chunk_status_name(status: int) -> str:
    return events_pb2.ChunkStatus.Name(status).removeprefix("CHUNK_STATUS_")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_duration(ms: int) -> str:
    s = ms / 1000
    if s < 60:
        return f"{s:.1f}s"
    m, s = divmod(int(s), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s"


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def summary_rows(s: tracker_pb2.RunSummary) -> list[tuple[str, str]]:
    """The card's (label, value) lines; pure, so tests can check the content."""
    rows: list[tuple[str, str]] = [
        ("run", s.run_id),
        ("export", s.export_name),
        ("status", status_name(s.status)),
    ]
    if s.chunks_total:
        rows.append(
            (
                "chunks",
                f"{s.chunks_completed}/{s.chunks_total} completed"
                + (f", {s.chunks_failed} failed" if s.chunks_failed else ""),
            )
        )
    rows += [
        ("rows", f"{s.total_rows:,}"),
        (
            "files",
            f"{s.files_committed or s.files_produced}"
            + (
                f" ({s.files_produced} written)"
                if s.files_produced != s.files_committed and s.files_committed
                else ""
            ),
        ),
        ("bytes", human_bytes(s.bytes_written)),
        ("duration", human_duration(s.duration_ms)),
    ]
    rate = s.total_rows / (s.duration_ms / 1000) if s.duration_ms > 0 else 0.0
    rows.append(("rows/s", f"{rate:,.0f}"))
    rows.append(("peak RSS", f"{s.peak_rss_mb:.1f} MB"))
    rows.append(("retries", str(s.retries)))
    rows.append(("validated", yes_no(s.validated)))
    recon = yes_no(s.reconciled)
    if s.source_count:
        recon += f" (source {s.source_count:,} rows)"
    rows.append(("reconciled", recon))
    if s.format:
        fmt = s.format + (f"/{s.compression}" if s.compression else "")
        rows.append(("format", fmt + (f", mode {s.mode}" if s.mode else "")))
    if s.schema_changed:
        rows.append(("schema", "changed"))
    if s.manifest_uri:
        rows.append(("manifest", s.manifest_uri))
    if s.manifest_fingerprint:
        rows.append(("fingerprint", s.manifest_fingerprint))
    if s.anomalies:
        rows.append(("anomalies", str(s.anomalies)))
    if s.error_message:
        rows.append(("error", s.error_message))
    if s.skip_reason:
        rows.append(("skipped", s.skip_reason))
    if s.HasField("scheduled_at"):
        rows.append(("scheduled", s.scheduled_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC")))
    if s.waiting_reason:
        rows.append(("waiting", s.waiting_reason))
    return rows


def card_text(s: tracker_pb2.RunSummary) -> str:
    """The card as plain text (no terminal)."""
    rows = summary_rows(s)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def print_card(s: tracker_pb2.RunSummary, console: Console) -> None:
    if not console.is_terminal:
        console.print(card_text(s), markup=False, highlight=False, soft_wrap=True)
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for k, v in summary_rows(s):
        grid.add_row(k, v)
    color = {
        events_pb2.RUN_STATUS_SUCCEEDED: "green",
        events_pb2.RUN_STATUS_FAILED: "red",
        events_pb2.RUN_STATUS_SKIPPED: "yellow",
        events_pb2.RUN_STATUS_CANCELED: "yellow",
    }.get(s.status, "blue")
    console.print(
        Panel(grid, title=f"run {status_name(s.status)}", border_style=color, expand=False)
    )


def summary_json(s: tracker_pb2.RunSummary) -> str:
    return json.dumps(
        json_format.MessageToDict(s, preserving_proto_field_name=True),
        indent=2,
        ensure_ascii=False,
    )


def runs_table(runs: Iterable[tracker_pb2.RunSummary]) -> Table:
    t = Table(box=box.SIMPLE_HEAD)
    for col in ("run", "export", "status", "rows", "files", "duration", "requested"):
        t.add_column(col, justify="right" if col in ("rows", "files", "duration") else "left")
    for r in runs:
        req = (
            r.requested_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
            if r.HasField("requested_at")
            else ""
        )
        t.add_row(
            r.run_id,
            r.export_name,
            status_name(r.status),
            f"{r.total_rows:,}",
            str(r.files_committed or r.files_produced),
            human_duration(r.duration_ms),
            req,
        )
    return t


def plan_text(resp: control_pb2.PlanRunResponse) -> str:
    p = resp.plan
    lines = [
        f"export:   {resp.spec.name}",
        f"plan:     {p.plan_id}",
        f"strategy: {p.strategy}" + _chunked_on(p),
        f"format:   {p.format}/{p.compression}, batch {p.batch_size}"
        + (f", profile {p.tuning_profile}" if p.tuning_profile else ""),
        f"estimate: {p.row_estimate:,} rows",
        f"chunks:   {len(p.chunks)}",
    ]
    if resp.spec.consistent_snapshot:
        # a dry run exports no snapshot: the run's planner takes it and holds it to the end
        lines.append("snapshot: one exported snapshot for every chunk, taken when the run plans")
    pages = p.chunk_by == CHUNK_BY_PAGES
    for c in p.chunks:
        lines.append(f"  {c.index:>5}  {page_range(c) if pages else chunk_range(c)}")
    lines.append("schema:")
    for f in p.schema:
        null = "" if f.nullable else " not null"
        src = f"  ({f.source_type})" if f.source_type else ""
        lines.append(f"  {f.name}: {f.type}{null}{src}")
    if resp.warnings:
        lines.append("warnings:")
        lines += [f"  [{w.rule}] {w.message}" for w in resp.warnings]
    return "\n".join(lines)


def _chunked_on(p: events_pb2.PlanResolved) -> str:
    if p.chunk_by == CHUNK_BY_PAGES:
        return f" by heap pages ({p.key_high} blocks when planned, each range a TID range scan)"
    return f" on {p.chunk_column} [{p.key_low} .. {p.key_high}]" if p.chunk_column else ""


def page_range(c: events_pb2.ChunkRange) -> str:
    return f"pages [{c.start_key}, {c.end_key or 'end'})"


def chunk_range(c: events_pb2.ChunkRange) -> str:
    if c.null_keys:
        return "key IS NULL"
    lo = f"[{c.start_key}" if c.start_key else "(-inf"
    hi = (f"{c.end_key}]" if c.end_inclusive else f"{c.end_key})") if c.end_key else "+inf)"
    return f"{lo}, {hi}"


# ---- events -------------------------------------------------------------------------------------


def event_message(ev: events_pb2.RunEvent) -> str:
    """A short, secret-free description of one event body."""
    kind = ev.WhichOneof("body")
    if kind is None:
        return ""
    b: Any = getattr(ev, kind)
    match kind:
        case "run_requested":
            src = b.spec.table or "query"
            return f"{b.spec.source.engine} {src} -> {b.spec.format} by {b.requested_by or '?'}"
        case "plan_resolved":
            return (
                f"{b.strategy}: {len(b.chunks)} chunks, ~{b.row_estimate:,} rows, "
                f"{len(b.schema)} columns"
                + (f", snapshot {b.snapshot_id}" if b.snapshot_id else "")
            )
        case "plan_warning":
            return f"[{b.rule}] {b.message}"
        case "chunk_started":
            prio = f" priority {b.priority}" if b.priority else ""
            return f"chunk {b.chunk_index} attempt {b.attempt} [{b.start_key}, {b.end_key}){prio}"
        case "file_written":
            return f"{b.file_name}: {b.rows:,} rows, {human_bytes(b.bytes)}"
        case "chunk_completed":
            return f"chunk {b.chunk_index}: {b.rows:,} rows in {b.files} files"
        case "chunk_failed":
            tail = "will retry" if b.retryable else "permanent"
            return f"chunk {b.chunk_index} attempt {b.attempt} ({tail}): {b.error}"
        case "retry_attempted":
            return f"chunk {b.chunk_index} attempt {b.attempt} in {b.backoff_ms} ms: {b.reason}"
        case "quality_issue":
            return (
                f"{events_pb2.Severity.Name(b.severity).removeprefix('SEVERITY_')} "
                f"[{b.rule}] {b.message}"
            )
        case "schema_changed":
            return (
                f"added {list(b.added)} removed {list(b.removed)} "
                f"type_changed {list(b.type_changed)}"
            )
        case "warning":
            return f"{b.context}: {b.message}"
        case "validation_result":
            return "passed" if b.passed else "failed: " + ", ".join(f.code for f in b.failures)
        case "reconciliation_result":
            return (
                f"source {b.source_count:,} exported {b.exported_rows:,} "
                f"{'matched' if b.matched else 'MISMATCH'}"
            )
        case "manifest_committed":
            return f"{b.row_count:,} rows in {b.part_count} parts: {b.manifest_uri}"
        case "run_completed":
            msg = status_name(b.status) + f" in {human_duration(b.duration_ms)}"
            if b.error_message:
                msg += f": {b.error_message}"
            if b.skip_reason:
                msg += f": {b.skip_reason}"
            return msg
        case "cancel_requested":
            return f"by {b.requested_by or '?'}: {b.reason}"
        case "run_scheduled":
            when = b.scheduled_at.ToJsonString()
            return f"for {when} ({b.cron} {b.timezone}), priority {b.priority}"
        case "run_ready":
            return b.reason + (f" (run {b.waiting_for})" if b.waiting_for else "")
    return ""


def event_line(stored: tracker_pb2.StoredEvent) -> str:
    ev = stored.event
    when = (
        ev.occurred_at.ToDatetime().strftime("%H:%M:%S.%f")[:-3]
        if ev.HasField("occurred_at")
        else "-"
    )
    kind = stored.kind or (ev.WhichOneof("body") or "?")
    return f"{stored.seq:>8}  {when}  {kind:<22} {' '.join(event_message(ev).split())}"


# ---- progress ------------------------------------------------------------------------------------


class RunProgress:
    """Chunks completed/total and rows, from PlanResolved and ChunkCompleted events. A live rich
    bar on a terminal; otherwise a plain line at most every `every_s` seconds."""

    def __init__(
        self, run_id: str, console: Console, *, every_s: float = 2.0, out: IO[str] | None = None
    ) -> None:
        self.run_id = run_id
        self.console = console
        self.live = console.is_terminal
        self.every_s = every_s
        self.out = out
        self.total: int | None = None
        self.done: set[int] = set()
        self.rows = 0
        self.state = "waiting"
        self._last_print = 0.0
        self._progress: Progress | None = None
        self._task: Any = None
        self._lock = threading.Lock()
        self._dirty = False
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def __enter__(self) -> RunProgress:
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rows]} rows"),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.state, total=None, rows="0")
        elif self.every_s > 0:
            # an update that arrives inside the throttle window is printed by this ticker, so
            # that a run which goes quiet still shows where it stands
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()
        return self

    def _tick(self) -> None:
        while not self._stop.wait(self.every_s / 4):
            if self._dirty:
                self._plain()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=1)
        if self._progress is not None:
            self._refresh()
            self._progress.stop()
        elif exc[0] is None:
            self._plain(force=True)

    def update(self, stored: tracker_pb2.StoredEvent) -> None:
        ev = stored.event
        kind = ev.WhichOneof("body")
        if kind == "plan_resolved":
            self.total = len(ev.plan_resolved.chunks)
            self.state = "running"
        elif kind == "chunk_completed":
            idx = ev.chunk_completed.chunk_index
            if idx not in self.done:  # fenced: the first completion of a chunk counts
                self.done.add(idx)
                self.rows += ev.chunk_completed.rows
        elif kind == "manifest_committed":
            self.state = "committed"
        elif kind == "run_completed":
            self.state = status_name(ev.run_completed.status).lower()
        elif kind == "chunk_started" and self.state == "waiting":
            self.state = "running"
        self._refresh()
        self._plain()

    def _refresh(self) -> None:
        if self._progress is not None:
            self._progress.update(
                self._task,
                description=self.state,
                total=self.total,
                completed=len(self.done),
                rows=f"{self.rows:,}",
            )

    def line(self) -> str:
        total = "?" if self.total is None else str(self.total)
        return (
            f"run {self.run_id}: {self.state}, chunks {len(self.done)}/{total}, rows {self.rows:,}"
        )

    def _plain(self, force: bool = False) -> None:
        if self.live:
            return
        with self._lock:
            now = time.monotonic()
            if not (force or now - self._last_print >= self.every_s):
                self._dirty = True
                return
            self._last_print = now
            self._dirty = False
            if self.out is not None:
                print(self.line(), file=self.out, flush=True)
            else:
                self.console.print(self.line(), markup=False, highlight=False)
