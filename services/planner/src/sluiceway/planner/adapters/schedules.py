"""Installed schedules in a JetStream key-value bucket (one key per export)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue

from sluiceway.common import codec
from sluiceway.common.domain.events import ExportSpec
from sluiceway.v1 import control_pb2 as cpb

log = logging.getLogger(__name__)

HISTORY = 16  # earlier versions of each schedule kept in the bucket, for `nats kv history`


@dataclass(frozen=True)
class Installed:
    """An export's installed schedule: its resolved spec and when this version was applied."""

    spec: ExportSpec
    installed_at: datetime
    installed_by: str = ""
    revision: int = 0
    installed_team: str = ""


def encode(item: Installed) -> bytes:
    msg = cpb.InstalledSchedule(installed_by=item.installed_by, installed_team=item.installed_team)
    codec.to_message(item.spec, msg.spec)
    msg.installed_at.CopyFrom(codec.timestamp(item.installed_at))
    data: bytes = msg.SerializeToString(deterministic=True)
    return data


def decode(data: bytes, revision: int = 0) -> Installed:
    msg = cpb.InstalledSchedule()
    msg.ParseFromString(data)
    return Installed(
        spec=codec.from_message(msg.spec, ExportSpec),
        installed_at=msg.installed_at.ToDatetime(tzinfo=UTC),
        installed_by=msg.installed_by,
        revision=revision,
        installed_team=msg.installed_team,
    )


class ScheduleBucket:
    """`<NAMESPACE>_SCHEDULES`: the desired state `sluiceway schedule apply` writes. A KV
    bucket is a stream of its own (history per key, replicated like the run log); the runs it
    produces carry their whole spec in RunScheduled, so the run log stays self-contained."""

    def __init__(self, js: JetStreamContext, bucket: str, *, replicas: int = 1) -> None:
        self._js = js
        self._bucket = bucket
        self._replicas = replicas
        self._kv: KeyValue | None = None

    async def _open(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self._js.key_value(self._bucket)
            except BucketNotFoundError:
                self._kv = await self._js.create_key_value(
                    KeyValueConfig(
                        bucket=self._bucket,
                        description="Sluiceway installed schedules (sluiceway schedule apply)",
                        history=HISTORY,
                        storage=StorageType.FILE,
                        replicas=self._replicas,
                    )
                )
        return self._kv

    async def keys(self) -> list[str]:
        """Every key with a message in the bucket (deleted ones too: their marker), as the
        server counts them in one request. nats-py's KeyValue.keys() reads a watcher, which
        under load could end before its first key and answer "no keys": every installed
        schedule then looked removed, and its due occurrence was skipped."""
        prefix = f"$KV.{self._bucket}."
        info = await self._js.stream_info(f"KV_{self._bucket}", subjects_filter=f"{prefix}>")
        return sorted(s[len(prefix) :] for s in (info.state.subjects or {}))

    async def all(self) -> dict[str, Installed]:
        kv = await self._open()
        out: dict[str, Installed] = {}
        keys = await self.keys()
        for key in keys:
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:  # deleted between keys() and get()
                continue
            if entry.value is None:
                continue
            try:
                item = decode(entry.value, entry.revision or 0)
            except Exception as exc:  # a value this version cannot read: leave it, say so
                log.warning("skipping the unreadable schedule %r: %s", key[:80], exc)
                continue
            out[item.spec.name] = item
        return out

    async def put(self, item: Installed) -> int:
        kv = await self._open()
        revision: int = await kv.put(item.spec.name, encode(item))
        return revision

    async def delete(self, export_name: str) -> None:
        kv = await self._open()
        await kv.delete(export_name)
