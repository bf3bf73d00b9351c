"""The bus: NATS JetStream streams, consumers and appends with dedup ids and OCC checks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoServersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, NotFoundError

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
    RunCompleted,
    RunEvent,
    RunScheduled,
    priority_of,
)

log = logging.getLogger(__name__)

# JetStream error code for a failed Nats-Expected-Last-Subject-Sequence check.
ERR_WRONG_LAST_SEQUENCE = 10071
DUPLICATE_WINDOW_S = 300.0
# Events are small, except PlanResolved, which lists every chunk range (about 30 bytes each):
# 1 MiB (nats-server's default max_payload) holds a plan of MAX_CHUNKS chunks with room to spare.
MAX_EVENT_BYTES = 1024 * 1024


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
    def runs_all(self) -> str:
        return f"{self.namespace}.runs.>"

    def run_subject(self, run_id: str, kind: str) -> str:
        return f"{self.namespace}.runs.{run_id}.{kind}"

    def event_subject(self, event: RunEvent) -> str:
        """Where an event is stored. ChunkStarted and ChunkCompleted have a subject of their own
        per chunk (one more token), so that the stream can arbitrate them (PER_CHUNK_SUBJECT)."""
        subject = self.run_subject(event.run_id, event.kind)
        if type(event.body) in PER_CHUNK_SUBJECT:
            subject += f".{event.body.chunk_index}"  # type: ignore[union-attr]
        elif isinstance(event.body, ManifestCommitted | RunScheduled):
            subject += f".{export_token(event.export_name)}"
        return subject

    def export_occurrences(self, export_name: str) -> str:
        """Every RunScheduled of one export: the last one is its latest scheduled occurrence."""
        return f"{self.namespace}.runs.*.scheduled.{export_token(export_name)}"

    def export_commits(self, export_name: str) -> str:
        """Every ManifestCommitted of one export, whatever the run: the export's state (its
        committed cursor, its last committed run) is the last message on this filter."""
        return f"{self.namespace}.runs.*.manifest_committed.{export_token(export_name)}"

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
        p = priority_of(priority)
        if p <= PRIORITY_LOW:
            return f"{self.chunk_tasks}.low"
        if p >= PRIORITY_HIGH:
            return f"{self.chunk_tasks}.high"
        return self.chunk_tasks

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


LANES: tuple[int, ...] = (PRIORITY_HIGH, PRIORITY_NORMAL, PRIORITY_LOW)


def lane_durable(base: str, priority: int) -> str:
    """worker-chunks (normal), worker-chunks-high, worker-chunks-low."""
    p = priority_of(priority)
    return base if p == PRIORITY_NORMAL else f"{base}-{'high' if p > PRIORITY_NORMAL else 'low'}"


@dataclass(frozen=True)
class TaskConsumerSettings:
    durable: str = "worker-chunks"
    ack_wait_s: float = 60.0
    # Upper bound for every export; each export's own budget (max_attempts) is enforced by the
    # worker from num_delivered, since one shared consumer has one max_deliver.
    max_deliver: int = 10
    max_ack_pending: int = 1000


async def connect(url: str, *, name: str, connect_timeout_s: float | None = None) -> NATS:
    """Connect with unlimited reconnects. Waits for the server to appear (forever by default)."""
    loop = asyncio.get_running_loop()
    deadline = None if connect_timeout_s is None else loop.time() + connect_timeout_s
    delay = 0.2
    while True:
        try:
            return await nats.connect(
                url,
                name=name,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                connect_timeout=2,
                allow_reconnect=True,
            )
        except (NoServersError, OSError, NatsTimeoutError) as exc:
            if deadline is not None and loop.time() + delay > deadline:
                raise ConnectionError(f"cannot reach NATS at {url}: {exc}") from exc
            log.warning("waiting for NATS at %s: %s", url, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def connect_unless_stopped(url: str, *, name: str, stop: asyncio.Event) -> NATS | None:
    """Wait for NATS like `connect`, but give up (None) when `stop` is set first: a SIGTERM
    while NATS is down ends the service instead of hanging it."""
    connecting = asyncio.create_task(connect(url, name=name))
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

    def __init__(self, nc: NATS, names: Names = Names()) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=10)
        self.names = names

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
            discard=DiscardPolicy.OLD,
            allow_direct=True,
            deny_delete=True,
            deny_purge=True,
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
        for cfg in (runs, tasks):
            await self._upsert_stream(cfg)

    async def _upsert_stream(self, cfg: StreamConfig) -> None:
        try:
            await self.js.stream_info(cfg.name)  # type: ignore[arg-type]
        except NotFoundError:
            await self.js.add_stream(cfg)
            return
        await self.js.update_stream(cfg)

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
        await self.js.add_consumer(self.names.tasks_stream, cfg)
        return cfg

    async def ensure_run_consumer(
        self, durable: str, filter_subjects: list[str], *, ack_wait_s: float = 30.0
    ) -> ConsumerConfig:
        """A durable pull consumer over run events (planner-requests, committer-runs)."""
        cfg = ConsumerConfig(
            durable_name=durable,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait_s,
            max_deliver=-1,
            max_ack_pending=1000,
            filter_subjects=filter_subjects,
        )
        await self.js.add_consumer(self.names.runs_stream, cfg)
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
        try:
            ack = await self.js.publish(subject, codec.encode(event), headers=hdrs)
        except APIError as exc:
            if exc.err_code == ERR_WRONG_LAST_SEQUENCE:
                existing = await self.last_on_subject(subject)
                return Appended(seq=existing[0] if existing else 0, conflict=True)
            raise
        return Appended(seq=ack.seq, duplicate=bool(ack.duplicate))

    async def publish_task(self, task: ChunkTask, msg_id: str) -> Appended:
        hdrs = {"Nats-Msg-Id": msg_id}
        telemetry.inject(hdrs)
        ack = await self.js.publish(
            self.names.task_lane(task.priority), codec.encode_task(task), headers=hdrs
        )
        return Appended(seq=ack.seq, duplicate=bool(ack.duplicate))

    # ---- reads ----------------------------------------------------------------------------

    async def last_on_subject(self, subject: str) -> tuple[int, RunEvent] | None:
        try:
            raw = await self.js.get_last_msg(self.names.runs_stream, subject)
        except NotFoundError:
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

    async def last_commit(self, export_name: str) -> RunEvent | None:
        """The export's latest ManifestCommitted (one direct get over its commits), if any."""
        found = await self.last_on_subject(self.names.export_commits(export_name))
        if found is None or not isinstance(found[1].body, ManifestCommitted):
            return None
        return found[1]

    async def last_scheduled(self, export_name: str) -> RunEvent | None:
        """The export's latest RunScheduled (one direct get over its occurrences), if any."""
        found = await self.last_on_subject(self.names.export_occurrences(export_name))
        if found is None or not isinstance(found[1].body, RunScheduled):
            return None
        return found[1]

    async def claim(self, event: RunEvent, expected_last_seq: int) -> bool:
        """Append `event` only if the last message of its subject is still at
        `expected_last_seq`; True when the stored fact is this one. Two executions that raced
        for the same slot (same event id) are told apart by their producer."""
        appended = await self.append(event, expected_last_seq=expected_last_seq)
        if not appended.duplicate and not appended.conflict:
            return True
        try:
            raw = await self.js.get_msg(self.names.runs_stream, seq=appended.seq)
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
        out: list[tuple[int, RunEvent]] = []
        async for msg in self.iter_messages(subject, start_seq=start_seq, batch=batch):
            assert msg.metadata.sequence is not None
            seq = msg.metadata.sequence.stream
            try:
                out.append((seq, codec.decode(msg.data, subject=msg.subject)))
            except codec.Poison as exc:
                log.warning("skipping an unreadable message at seq %d: %s", seq, exc)
        return out

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

    async def stream_last_seq(self) -> int:
        info = await self.js.stream_info(self.names.runs_stream)
        return info.state.last_seq


def msg_headers(msg: Msg) -> dict[str, str]:
    return dict(msg.headers or {})
