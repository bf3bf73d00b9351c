"""The bus: NATS JetStream streams, consumers and appends with dedup ids and OCC checks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import ConnectionReconnectingError, NoRespondersError, NoServersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RawStreamMsg,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamState,
)
from nats.js.errors import (
    APIError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)

from sluiceway.common import codec, telemetry
from sluiceway.common.domain.events import (
    ONCE_PER_CHUNK,
    ONCE_PER_RUN,
    PER_CHUNK_SUBJECT,
    PRIORITY_HIGH,
    PRIORITY_LOW,
    PRIORITY_NORMAL,
    ChunkCompleted,
    ChunkStarted,
    ChunkTask,
    ManifestCommitted,
    PlanResolved,
    RunCompleted,
    RunEvent,
    RunScheduled,
    priority_of,
)
from sluiceway.common.redact import redact

log = logging.getLogger(__name__)
T = TypeVar("T")

# JetStream error code for a failed Nats-Expected-Last-Subject-Sequence check.
ERR_WRONG_LAST_SEQUENCE = 10071
DUPLICATE_WINDOW_S = 300.0
# the header of a state message naming the run-stream message it copies
SOURCE_SEQ = "Sluiceway-Source-Seq"
STATE_CAS_TRIES = 20
URL_SCHEMES = ("nats", "tls", "ws", "wss")
# Events are small, except PlanResolved, which lists every chunk range (about 30 bytes each):
# 1 MiB (nats-server's default max_payload) holds a plan of MAX_CHUNKS chunks with room to spare.
MAX_EVENT_BYTES = 1024 * 1024


# What a JetStream request meets while a cluster node is lost, a stream (or the meta layer)
# elects a new leader, or the client moves to another node: no answer in time, no responder,
# "temporarily unavailable". Sending the same request again is safe: appends carry their dedup
# id (one already stored is acknowledged as a duplicate), reads and declarations are idempotent.
TRANSIENT: tuple[type[Exception], ...] = (
    NatsTimeoutError,
    NoRespondersError,
    NoStreamResponseError,
    ServiceUnavailableError,
    ConnectionReconnectingError,
)
# The same publish sent again while the first is still being replicated (its leader has not
# reached a quorum yet): the retry is answered once the first one is stored or dropped.
ERR_DUPLICATE_IN_PROCESS = 10158


def transient(exc: BaseException) -> bool:
    """An error that a failover gives and that trying again later can cure."""
    if isinstance(exc, TRANSIENT):
        return True
    return isinstance(exc, APIError) and exc.err_code == ERR_DUPLICATE_IN_PROCESS


# How long one bus operation keeps trying: longer than a leader election (raft's election
# timeout is 4-9 s, plus detecting the loss and reconnecting), short enough that a cluster
# that has lost its quorum surfaces as an error the caller settles (nak, redelivery).
RETRY_BUDGET_S = 60.0
# One try of a JetStream request. A request in flight when its node dies, or sent while its
# stream has no leader, is never answered: it costs this long before it is sent again. Short,
# since a try that was merely slow is harmless to repeat; long beside a request's normal
# milliseconds, even on a loaded machine.
REQUEST_TIMEOUT_S = 3.0
RETRY_MAX_DELAY_S = 2.0


async def retrying(
    op: Callable[[], Awaitable[T]], what: str, *, budget_s: float = RETRY_BUDGET_S
) -> T:
    """`op()`, tried again after a `transient` error with a capped backoff until `budget_s`
    has passed; then the last error is raised. Any other error is raised at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget_s
    delay = 0.1
    failures = 0
    while True:
        try:
            result = await op()
        except Exception as exc:
            if not transient(exc):
                raise
            failures += 1
            if loop.time() + delay > deadline:
                log.warning("%s failed %d times, giving up: %r", what, failures, exc)
                raise
            log.warning("%s failed (%r); trying again in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_DELAY_S)
        else:
            if failures:
                log.info("%s succeeded after %d failed tries", what, failures)
            return result


def export_token(export_name: str) -> str:
    """An export name as one subject token: names may hold '.', which '~' (never in a name)
    replaces, so the mapping stays one to one."""
    return export_name.replace(".", "~")


@dataclass(frozen=True)
class Names:
    """Stream, subject and consumer names, derived from one namespace (tests use their own)."""

    namespace: str = "sluiceway"

    @property
    def runs_stream(self) -> str:
        return f"{self.namespace.upper()}_RUNS"

    @property
    def tasks_stream(self) -> str:
        return f"{self.namespace.upper()}_TASKS"

    @property
    def state_stream(self) -> str:
        return f"{self.namespace.upper()}_STATE"

    @property
    def runs_all(self) -> str:
        return f"{self.namespace}.runs.>"

    @property
    def state_all(self) -> str:
        return f"{self.namespace}.state.>"

    def export_state(self, kind: str, export_name: str) -> str:
        """One compacted fact of an export (STATE_KINDS): the state stream keeps the last
        message of each subject only, whatever the run stream has dropped since."""
        return f"{self.namespace}.state.{kind}.{export_token(export_name)}"

    @property
    def scheduler_snapshot(self) -> str:
        """The scheduler's last snapshot of the open runs, with the feed position it covers."""
        return f"{self.namespace}.state.meta.scheduler"

    @property
    def state_backfilled(self) -> str:
        """Set once the export state holds every commit and occurrence of the run stream."""
        return f"{self.namespace}.state.meta.backfilled"

    def run_subject(self, run_id: str, kind: str) -> str:
        return f"{self.namespace}.runs.{run_id}.{kind}"

    def event_subject(self, event: RunEvent) -> str:
        """Where an event is stored. ChunkStarted and ChunkCompleted have a subject of their own
        per chunk (one more token), so that the stream can arbitrate them (PER_CHUNK_SUBJECT)."""
        subject = self.run_subject(event.run_id, event.kind)
        if type(event.body) in PER_CHUNK_SUBJECT:
            subject += f".{event.body.chunk_index}"  # type: ignore[union-attr]
        elif isinstance(event.body, ManifestCommitted | RunScheduled):
            return self.export_fact(event.run_id, event.kind, event.export_name)
        return subject

    def export_fact(self, run_id: str, kind: str, export_name: str) -> str:
        """A fact stored under one more token, its export's name (ManifestCommitted,
        RunScheduled): the backfill of the export state finds each export's latest by it."""
        return f"{self.run_subject(run_id, kind)}.{export_token(export_name)}"

    def chunk_subject(self, run_id: str, kind: str, chunk_index: int) -> str:
        return f"{self.run_subject(run_id, kind)}.{chunk_index}"

    def run_history(self, run_id: str) -> str:
        return f"{self.namespace}.runs.{run_id}.>"

    def runs_of_kind(self, kind: str) -> str:
        return f"{self.namespace}.runs.*.{kind}"

    @property
    def chunk_tasks(self) -> str:
        """The normal-priority lane (the subject tasks had before there were lanes)."""
        return f"{self.namespace}.tasks.chunk"

    def task_lane(self, priority: int) -> str:
        """Chunk tasks are queued on one subject per priority: low and high have a token more
        than normal, so no two lanes' filters overlap (a work queue requires it)."""
        suffix = lane_suffix(priority)
        return f"{self.chunk_tasks}.{suffix}" if suffix else self.chunk_tasks

    @staticmethod
    def run_id_of(subject: str) -> str:
        return subject.split(".")[2]


@dataclass(frozen=True)
class Appended:
    """Outcome of an append: stored at `seq`, or already there (dedup id or once-only check)."""

    seq: int
    duplicate: bool = False
    conflict: bool = False  # a once-only fact that another writer appended first


@dataclass(frozen=True)
class StreamSettings:
    replicas: int = 1
    duplicate_window_s: float = DUPLICATE_WINDOW_S
    # the run stream's size bound (-1: none). Reached, it refuses new events (discard new):
    # history is dropped only once archived, never to make room.
    runs_max_bytes: int = -1


LANES: tuple[int, ...] = (PRIORITY_HIGH, PRIORITY_NORMAL, PRIORITY_LOW)


def lane_suffix(priority: int) -> str:
    """The name of a priority's lane in subjects and consumer names: '' for normal (the names
    tasks had before there were lanes), 'low', 'high'."""
    p = priority_of(priority)
    if p == PRIORITY_NORMAL:
        return ""
    return "high" if p > PRIORITY_NORMAL else "low"


def lane_durable(base: str, priority: int) -> str:
    """worker-chunks (normal), worker-chunks-high, worker-chunks-low."""
    suffix = lane_suffix(priority)
    return f"{base}-{suffix}" if suffix else base


@dataclass(frozen=True)
class TaskConsumerSettings:
    durable: str = "worker-chunks"
    ack_wait_s: float = 60.0
    # Upper bound for every export; each export's own budget (max_attempts) is enforced by the
    # worker from num_delivered, since one shared consumer has one max_deliver.
    max_deliver: int = 10
    max_ack_pending: int = 1000


def server_urls(url: str) -> list[str]:
    """The servers named by a NATS URL setting: one URL, or several comma-separated (the nodes
    of a cluster; the client connects to any and fails over to the others). Raises ValueError
    naming the bad entry (credentials in a URL are never repeated)."""
    servers = [u.strip() for u in url.split(",")]
    if not url.strip() or any(not u for u in servers):
        raise ValueError(
            f"{redact(url)!r}: expected nats://host:port, or several separated by commas"
        )
    websocket = set()
    for u in servers:
        try:
            parsed = urlsplit(u if "://" in u else f"nats://{u}")
            parsed.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError as exc:
            raise ValueError(f"{redact(u)!r}: not a NATS URL ({exc})") from None
        if parsed.scheme not in URL_SCHEMES or not parsed.hostname:
            raise ValueError(f"{redact(u)!r}: expected nats://host:port (or tls://, ws://, wss://)")
        websocket.add(parsed.scheme in ("ws", "wss"))
    if len(websocket) > 1:
        raise ValueError(f"{redact(url)!r}: websocket and plain NATS URLs cannot be mixed")
    return servers


async def connect(
    url: str,
    *,
    name: str,
    connect_timeout_s: float | None = None,
    options: Mapping[str, Any] | None = None,
) -> NATS:
    """Connect with unlimited reconnects. Waits for the server to appear (forever by default).
    `url` may list several servers separated by commas (see `server_urls`); `options` are
    more keyword arguments of nats.connect (a user, TLS: natsauth.NatsAuth.options)."""
    servers = server_urls(url)
    loop = asyncio.get_running_loop()
    deadline = None if connect_timeout_s is None else loop.time() + connect_timeout_s
    delay = 0.2
    while True:
        try:
            return await nats.connect(
                servers,
                name=name,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                connect_timeout=2,
                allow_reconnect=True,
                **(options or {}),
            )
        except nats.errors.AuthorizationError:
            user = (options or {}).get("user", "")
            raise ConnectionError(
                f"NATS at {redact(url)} refused the credentials of user {user!r}"
            ) from None
        except (NoServersError, OSError, NatsTimeoutError) as exc:
            if deadline is not None and loop.time() + delay > deadline:
                raise ConnectionError(f"cannot reach NATS at {redact(url)}: {exc}") from exc
            log.warning("waiting for NATS at %s: %s", redact(url), exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def connect_unless_stopped(
    url: str, *, name: str, stop: asyncio.Event, options: Mapping[str, Any] | None = None
) -> NATS | None:
    """Wait for NATS like `connect`, but give up (None) when `stop` is set first: a SIGTERM
    while NATS is down ends the service instead of hanging it."""
    connecting = asyncio.create_task(connect(url, name=name, options=options))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if connecting.done():
        return connecting.result()
    connecting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await connecting
    return None


class Bus:
    """Typed access to the two streams. One per process; built from an open NATS connection."""

    def __init__(
        self,
        nc: NATS,
        names: Names = Names(),
        *,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        retry_budget_s: float = RETRY_BUDGET_S,
    ) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=request_timeout_s)
        self.names = names
        # every request below is tried again after a transient error for this long (retrying)
        self.retry_budget_s = retry_budget_s

    # ---- declarations -------------------------------------------------------------------

    async def ensure_streams(self, settings: StreamSettings = StreamSettings()) -> None:
        """Declare both streams with their full configuration (create, or update in place)."""
        runs = StreamConfig(
            name=self.names.runs_stream,
            description="Sluiceway run events: the write-ahead log and the source of truth",
            subjects=[self.names.runs_all],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=settings.replicas,
            duplicate_window=settings.duplicate_window_s,
            max_msg_size=MAX_EVENT_BYTES,
            max_bytes=settings.runs_max_bytes,
            discard=DiscardPolicy.NEW,
            allow_direct=True,
            deny_delete=True,
            # the archiver purges the archived prefix (below a sequence, never a subject); only
            # the tracker's NATS user may (natsauth)
            deny_purge=False,
        )
        state = StreamConfig(
            name=self.names.state_stream,
            description="Sluiceway export state: the last commit, schema baseline and "
            "occurrence of each export, compacted (one message per subject)",
            subjects=[self.names.state_all],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            num_replicas=settings.replicas,
            duplicate_window=settings.duplicate_window_s,
            max_msg_size=MAX_EVENT_BYTES,
            max_msgs_per_subject=1,
            discard=DiscardPolicy.OLD,
            allow_direct=True,
        )
        tasks = StreamConfig(
            name=self.names.tasks_stream,
            description="Sluiceway chunk tasks (work queue)",
            subjects=[f"{self.names.namespace}.tasks.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            num_replicas=settings.replicas,
            duplicate_window=settings.duplicate_window_s,
            max_msg_size=64 * 1024,
            discard=DiscardPolicy.OLD,
        )
        for cfg in (runs, tasks, state):
            await self._upsert_stream(cfg)

    async def _upsert_stream(self, cfg: StreamConfig) -> None:
        """Create the stream, or update it when a field this version sets differs. Several
        services start at once: an unchanged stream is left alone (in a cluster, each update is
        a proposal to every node), and a create raced by another service with the same config
        succeeds."""

        async def upsert() -> None:
            try:
                info = await self.js.stream_info(cfg.name)  # type: ignore[arg-type]
            except NotFoundError:
                await self.js.add_stream(cfg)
                return
            if config_differs(info.config, cfg):
                await self.js.update_stream(cfg)

        await retrying(upsert, f"declaring stream {cfg.name}", budget_s=self.retry_budget_s)

    async def ensure_task_consumer(
        self, settings: TaskConsumerSettings = TaskConsumerSettings(), priority: int = 0
    ) -> ConsumerConfig:
        """The shared consumer of one priority lane (normal when `priority` is 0)."""
        cfg = ConsumerConfig(
            durable_name=lane_durable(settings.durable, priority),
            description="chunk tasks shared by every worker",
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=settings.ack_wait_s,
            max_deliver=settings.max_deliver,
            max_ack_pending=settings.max_ack_pending,
            filter_subject=self.names.task_lane(priority),
        )
        await retrying(
            lambda: self.js.add_consumer(self.names.tasks_stream, cfg),
            f"declaring consumer {settings.durable}",
            budget_s=self.retry_budget_s,
        )
        return cfg

    async def ensure_run_consumer(
        self,
        durable: str,
        filter_subjects: list[str],
        *,
        ack_wait_s: float = 30.0,
        deliver_new: bool = False,
    ) -> ConsumerConfig:
        """A durable pull consumer over run events (planner-requests, committer-runs); with
        `deliver_new`, of the events stored after it was first declared (committer-notify:
        enabling notifications never notifies the history)."""
        cfg = ConsumerConfig(
            durable_name=durable,
            deliver_policy=DeliverPolicy.NEW if deliver_new else DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait_s,
            max_deliver=-1,
            max_ack_pending=1000,
            filter_subjects=filter_subjects,
        )
        await retrying(
            lambda: self.js.add_consumer(self.names.runs_stream, cfg),
            f"declaring consumer {durable}",
            budget_s=self.retry_budget_s,
        )
        return cfg

    # ---- appends --------------------------------------------------------------------------

    async def append(
        self,
        event: RunEvent,
        headers: Mapping[str, str] | None = None,
        *,
        expected_last_seq: int | None = None,
    ) -> Appended:
        """Append with Nats-Msg-Id = event_id; once-only facts also carry an expected last
        subject sequence of 0, so the stream refuses a second one for the same run (or, for
        ChunkCompleted, the same chunk). `expected_last_seq` makes any append conditional on
        the last message of its subject."""
        hdrs: dict[str, str] = {"Nats-Msg-Id": event.event_id, **(headers or {})}
        telemetry.inject(hdrs)
        if type(event.body) in ONCE_PER_RUN or type(event.body) in ONCE_PER_CHUNK:
            expected_last_seq = 0
        if expected_last_seq is not None:
            hdrs["Nats-Expected-Last-Subject-Sequence"] = str(expected_last_seq)
        subject = self.names.event_subject(event)
        data = codec.encode(event)
        try:
            ack = await retrying(
                lambda: self.js.publish(subject, data, headers=hdrs),
                f"appending {event.event_id}",
                budget_s=self.retry_budget_s,
            )
        except APIError as exc:
            if exc.err_code == ERR_WRONG_LAST_SEQUENCE:
                existing = await self.last_on_subject(subject)
                return Appended(seq=existing[0] if existing else 0, conflict=True)
            raise
        return Appended(seq=ack.seq, duplicate=bool(ack.duplicate))

    async def publish_task(self, task: ChunkTask, msg_id: str) -> Appended:
        hdrs = {"Nats-Msg-Id": msg_id}
        telemetry.inject(hdrs)
        data = codec.encode_task(task)
        ack = await retrying(
            lambda: self.js.publish(self.names.task_lane(task.priority), data, headers=hdrs),
            f"publishing task {msg_id}",
            budget_s=self.retry_budget_s,
        )
        return Appended(seq=ack.seq, duplicate=bool(ack.duplicate))

    # ---- reads ----------------------------------------------------------------------------

    async def last_on_subject(self, subject: str) -> tuple[int, RunEvent] | None:
        raw = await self._last_raw(self.names.runs_stream, subject)
        if raw is None:
            return None
        return raw.seq or 0, codec.decode(raw.data or b"")

    async def chunk_winner(self, run_id: str, chunk_index: int) -> int | None:
        """The attempt whose ChunkCompleted was stored for this chunk, if any (one direct get)."""
        subject = self.names.chunk_subject(run_id, "chunk_completed", chunk_index)
        found = await self.last_on_subject(subject)
        if found is None or not isinstance(found[1].body, ChunkCompleted):
            return None
        return found[1].body.attempt

    async def last_start(self, run_id: str, chunk_index: int) -> tuple[int, int] | None:
        """(stream seq, attempt) of the chunk's latest ChunkStarted, if any (one direct get)."""
        found = await self.last_on_subject(
            self.names.chunk_subject(run_id, "chunk_started", chunk_index)
        )
        if found is None or not isinstance(found[1].body, ChunkStarted):
            return None
        return found[0], found[1].body.attempt

    # ---- export state: compacted copies of run facts that must outlive the run stream ------

    async def _last_raw(self, stream: str, subject: str) -> RawStreamMsg | None:
        try:
            return await retrying(
                lambda: self.js.get_last_msg(stream, subject),
                f"reading the last message on {subject}",
                budget_s=self.retry_budget_s,
            )
        except NotFoundError:
            return None

    async def _state(self, kind: str, export_name: str, body: type) -> RunEvent | None:
        subject = self.names.export_state(kind, export_name)
        raw = await self._last_raw(self.names.state_stream, subject)
        if raw is None:
            return None
        event = codec.decode(raw.data or b"")
        return event if isinstance(event.body, body) else None

    async def last_commit(self, export_name: str) -> RunEvent | None:
        """The export's latest ManifestCommitted (its compacted state, one direct get)."""
        return await self._state("commit", export_name, ManifestCommitted)

    async def baseline(self, export_name: str) -> RunEvent | None:
        """The PlanResolved of the export's latest committed run: its schema is the baseline
        that drift is measured against (one direct get)."""
        return await self._state("baseline", export_name, PlanResolved)

    async def last_scheduled(self, export_name: str) -> RunEvent | None:
        """The export's latest RunScheduled (its compacted state, one direct get)."""
        return await self._state("scheduled", export_name, RunScheduled)

    async def put_state(self, subject: str, data: bytes, source_seq: int) -> bool:
        """Store `data`, the run-stream message at `source_seq`, as the state on `subject`
        unless the state already comes from that message or a later one: the state only
        moves forward in stream order, whoever writes and in whatever order (a commit and a
        backfill racing). Compare-and-set on the subject's last sequence; True if stored."""
        for _ in range(STATE_CAS_TRIES):
            current = await self._last_raw(self.names.state_stream, subject)
            held = int((current.headers or {}).get(SOURCE_SEQ, 0)) if current else 0
            if held >= source_seq:
                return False
            hdrs = {
                "Nats-Msg-Id": f"{subject}@{source_seq}",
                SOURCE_SEQ: str(source_seq),
                "Nats-Expected-Last-Subject-Sequence": str(current.seq if current else 0),
            }
            try:
                await retrying(
                    lambda hdrs=hdrs: self.js.publish(subject, data, headers=hdrs),  # type: ignore[misc]
                    f"storing the state {subject}",
                    budget_s=self.retry_budget_s,
                )
            except APIError as exc:
                if exc.err_code == ERR_WRONG_LAST_SEQUENCE:
                    continue  # another writer moved it first: compare again
                raise
            return True
        raise RuntimeError(f"the state {subject} kept changing under {STATE_CAS_TRIES} writes")

    async def record_commit(self, run_id: str, export_name: str) -> None:
        """Copy the run's ManifestCommitted (and its plan, the schema baseline) into the
        export's state. Idempotent: the committer calls it after ManifestCommitted is stored
        and before RunCompleted, again after a crash in between."""
        commit = await self._last_raw(
            self.names.runs_stream,
            self.names.export_fact(run_id, "manifest_committed", export_name),
        )
        if commit is None:
            raise LookupError(f"run {run_id} has no ManifestCommitted to record")
        plan = await self._last_raw(
            self.names.runs_stream, self.names.run_subject(run_id, "plan_resolved")
        )
        seq = commit.seq or 0
        # the baseline first: a crash between the two leaves the commit where it was
        if plan is not None:
            await self.put_state(
                self.names.export_state("baseline", export_name), plan.data or b"", seq
            )
        await self.put_state(
            self.names.export_state("commit", export_name), commit.data or b"", seq
        )

    async def record_scheduled(self, export_name: str, seq: int) -> None:
        """Copy the RunScheduled stored at `seq` into the export's state (idempotent)."""
        raw = await retrying(
            lambda: self.js.get_msg(self.names.runs_stream, seq=seq),
            f"reading seq {seq}",
            budget_s=self.retry_budget_s,
        )
        await self.put_state(
            self.names.export_state("scheduled", export_name), raw.data or b"", seq
        )

    async def scheduler_snapshot(self) -> tuple[int, bytes] | None:
        """(run-stream seq, data) of the scheduler's last snapshot of the open runs."""
        raw = await self._last_raw(self.names.state_stream, self.names.scheduler_snapshot)
        if raw is None:
            return None
        return int((raw.headers or {}).get(SOURCE_SEQ, 0)), raw.data or b""

    async def save_scheduler_snapshot(self, seq: int, data: bytes) -> bool:
        return await self.put_state(self.names.scheduler_snapshot, data, seq)

    async def stream_first_seq(self) -> int:
        return int((await self.stream_state()).first_seq)

    async def backfill_state(self) -> int:
        """Make the export state hold the latest commit and occurrence of every export that the
        run stream still has (a stream that predates the state, or a lost state stream): read
        the commits and occurrences only, not the whole log. Done once (a marker says so);
        several planners starting at once write the same facts. Returns the facts stored."""
        if await self._last_raw(self.names.state_stream, self.names.state_backfilled):
            return 0
        last_seq = await self.stream_last_seq()
        latest: dict[tuple[str, str], tuple[int, str]] = {}  # (kind, export) -> (seq, run)
        for kind in ("manifest_committed", "scheduled"):
            async for msg in self.iter_messages(f"{self.names.namespace}.runs.*.{kind}.*"):
                assert msg.metadata.sequence is not None
                export = msg.subject.split(".")[-1].replace("~", ".")
                seq = msg.metadata.sequence.stream
                latest[(kind, export)] = (seq, Names.run_id_of(msg.subject))
        stored = 0
        for (kind, export), (seq, run_id) in sorted(latest.items()):
            if kind == "scheduled":
                await self.record_scheduled(export, seq)
            else:
                await self.record_commit(run_id, export)
            stored += 1
        await self.put_state(self.names.state_backfilled, b"", max(1, last_seq))
        return stored

    async def claim(self, event: RunEvent, expected_last_seq: int) -> bool:
        """Append `event` only if the last message of its subject is still at
        `expected_last_seq`; True when the stored fact is this one. Two executions that raced
        for the same slot (same event id) are told apart by their producer."""
        appended = await self.append(event, expected_last_seq=expected_last_seq)
        if not appended.duplicate and not appended.conflict:
            return True
        try:
            raw = await retrying(
                lambda: self.js.get_msg(self.names.runs_stream, seq=appended.seq),
                f"reading seq {appended.seq}",
                budget_s=self.retry_budget_s,
            )
        except NotFoundError:
            return False
        stored = codec.decode(raw.data or b"")
        return stored.event_id == event.event_id and stored.producer == event.producer

    async def run_stopped(self, run_id: str) -> str:
        """Why no more work should be done for this run ('' while it may go on): it ended, or a
        cancel was requested and the planner has not ended it yet. Two direct gets."""
        ended = await self.last_on_subject(self.names.run_subject(run_id, "completed"))
        if ended is not None and isinstance(ended[1].body, RunCompleted):
            return f"the run ended {ended[1].body.status.value}"
        if await self.last_on_subject(self.names.run_subject(run_id, "cancel_requested")):
            return "the run is being canceled"
        return ""

    async def history(self, run_id: str, *, batch: int = 500) -> list[tuple[int, RunEvent]]:
        """Every event of one run, in stream order, read through an ephemeral consumer."""
        return await self.read_range(self.names.run_history(run_id), batch=batch)

    async def read_range(
        self, subject: str, *, start_seq: int = 0, batch: int = 500
    ) -> list[tuple[int, RunEvent]]:
        """Decoded events on `subject`; a message this version cannot read (the tracker records
        it as an anomaly) is skipped, so that it never blocks the run's other readers."""

        async def read() -> list[tuple[int, RunEvent]]:
            out: list[tuple[int, RunEvent]] = []
            async for msg in self.iter_messages(subject, start_seq=start_seq, batch=batch):
                assert msg.metadata.sequence is not None
                seq = msg.metadata.sequence.stream
                try:
                    out.append((seq, codec.decode(msg.data, subject=msg.subject)))
                except codec.Poison as exc:
                    log.warning("skipping an unreadable message at seq %d: %s", seq, exc)
            return out

        # a read cut short (its ephemeral consumer lived on a node that died) starts over
        return await retrying(read, f"reading {subject}", budget_s=self.retry_budget_s)

    async def iter_raw(
        self, subject: str, *, start_seq: int = 0, batch: int = 500
    ) -> AsyncIterator[tuple[int, bytes]]:
        """Yield (seq, bytes) of every stored message on `subject` from `start_seq` to the
        current end of the stream, then stop."""
        async for msg in self.iter_messages(subject, start_seq=start_seq, batch=batch):
            assert msg.metadata.sequence is not None
            yield msg.metadata.sequence.stream, msg.data

    async def iter_messages(
        self, subject: str, *, start_seq: int = 0, batch: int = 500
    ) -> AsyncIterator[Msg]:
        """Every stored message on `subject` (with its headers), through an ephemeral consumer,
        up to the end of the stream as it is when the read starts."""
        cfg = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start_seq else DeliverPolicy.ALL,
            opt_start_seq=start_seq or None,
            inactive_threshold=30.0,
            mem_storage=True,
            filter_subject=subject,
        )
        sub = await self.js.pull_subscribe(subject, stream=self.names.runs_stream, config=cfg)
        try:
            info = await sub.consumer_info()
            pending = info.num_pending or 0
            while pending > 0:
                msgs = await sub.fetch(min(batch, pending), timeout=5)
                for m in msgs:
                    yield m
                    pending = m.metadata.num_pending
        finally:
            await sub.unsubscribe()

    async def stored_range(self, first: int, stop: int) -> list[tuple[int, str, datetime, bytes]]:
        """(seq, subject, stored time, bytes) of the run stream's messages from `first` up to
        `stop` (excluded), as stored; fewer when the stream no longer holds some of them."""

        async def read() -> list[tuple[int, str, datetime, bytes]]:
            cfg = ConsumerConfig(
                ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=first,
                inactive_threshold=30.0,
                mem_storage=True,
                # unfiltered, like the tracker's projection (see tracker/app.py)
            )
            sub = await self.js.pull_subscribe("", stream=self.names.runs_stream, config=cfg)
            out: list[tuple[int, str, datetime, bytes]] = []
            try:
                pending = (await sub.consumer_info()).num_pending or 0
                while pending > 0:
                    for m in await sub.fetch(min(500, pending), timeout=5):
                        meta = m.metadata
                        assert meta.sequence is not None and meta.timestamp is not None
                        if meta.sequence.stream >= stop:
                            return out
                        out.append((meta.sequence.stream, m.subject, meta.timestamp, m.data))
                        pending = meta.num_pending
            finally:
                await sub.unsubscribe()
            return out

        return await retrying(
            read, f"reading seq {first}..{stop - 1}", budget_s=self.retry_budget_s
        )

    async def stream_state(self) -> StreamState:
        """The run stream's first and last sequence, messages and bytes."""
        info = await retrying(
            lambda: self.js.stream_info(self.names.runs_stream),
            "reading the run stream's state",
            budget_s=self.retry_budget_s,
        )
        return info.state

    async def stream_last_seq(self) -> int:
        return int((await self.stream_state()).last_seq)


def config_differs(current: StreamConfig, wanted: StreamConfig) -> bool:
    """True when a field that `wanted` sets (not None) has another value in `current`."""
    for f in fields(wanted):
        value = getattr(wanted, f.name)
        if value is not None and getattr(current, f.name, None) != value:
            return True
    return False


def msg_headers(msg: Msg) -> dict[str, str]:
    return dict(msg.headers or {})
