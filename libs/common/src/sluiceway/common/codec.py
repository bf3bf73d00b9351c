"""Domain event <-> protobuf <-> (subject, headers, bytes).

The domain dataclasses and the proto messages share names and field names, so the conversion is
driven by the dataclass fields: nested dataclasses, tuples of them, enums (proto `RUN_STATUS_X`
<-> domain `RunStatus.X`), maps and Timestamps. A field the domain does not know is ignored
(additive evolution); an unknown body or undecodable bytes raise `Poison`.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from google.protobuf import timestamp_pb2
from google.protobuf.message import DecodeError, Message

from sluiceway.common.domain import events as ev
from sluiceway.common.domain.ids import RUN_ID_RE
from sluiceway.v1 import events_pb2 as pb

T = TypeVar("T")


class Poison(ValueError):
    """A message that can never be decoded: redelivery cannot help, terminate it."""


# ---- dataclass <-> message ------------------------------------------------------------------


@functools.cache
def _hints(cls: Any) -> dict[str, Any]:
    return typing.get_type_hints(cls, vars(ev))


def _enum_prefix(enum_cls: type[enum.Enum]) -> str:
    # RunStatus -> RUN_STATUS_
    name = enum_cls.__name__
    return "".join("_" + c if c.isupper() and i else c for i, c in enumerate(name)).upper() + "_"


def _unwrap_optional(tp: Any) -> Any:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and args:
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return non_none[0]
    return tp


def to_message(obj: Any, msg: Message) -> Message:
    """Fill `msg` from the dataclass `obj` (same field names)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None:
            continue
        target = getattr(msg, f.name)
        if isinstance(value, datetime):
            target.FromDatetime(value.astimezone(UTC))
        elif dataclasses.is_dataclass(value):
            to_message(value, target)
        elif isinstance(value, tuple):
            for item in value:
                if dataclasses.is_dataclass(item):
                    to_message(item, target.add())
                else:
                    target.append(item)
        elif isinstance(value, dict):
            target.update(value)
        elif isinstance(value, enum.Enum):
            setattr(msg, f.name, _enum_prefix(type(value)) + value.value)
        else:
            setattr(msg, f.name, value)
    return msg


Converter = Callable[[Any], Any] | None  # None: the protobuf value is the domain value


def _converter(tp: Any, field_desc: Any) -> Converter:
    """How one protobuf field's value becomes the domain type `tp` (decided once per field)."""
    tp = _unwrap_optional(tp)
    if tp is datetime:
        return lambda value: value.ToDatetime(tzinfo=UTC)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        prefix = _enum_prefix(tp)
        by_number = {}
        for v in field_desc.enum_type.values:
            name = v.name[len(prefix) :] if v.name.startswith(prefix) else "UNSPECIFIED"
            try:
                by_number[v.number] = tp(name)
            except ValueError:  # a value the domain lacks fails when met (a KeyError)
                pass
        return by_number.__getitem__
    if dataclasses.is_dataclass(tp):
        return functools.partial(from_message, cls=tp)  # type: ignore[arg-type]
    origin = typing.get_origin(tp)
    if origin is tuple:
        (item_tp, *_rest) = typing.get_args(tp)
        item = _converter(item_tp, field_desc)
        if item is None:
            return tuple
        return lambda value: tuple(map(item, value))
    if origin is dict:
        return dict
    return None


@functools.cache
def _decoder(cls: Any, descriptor: Any) -> list[tuple[str, bool, Converter]]:
    """Per (dataclass, message type): each shared field's name, whether an unset value keeps
    the dataclass default (messages and proto3 `optional` scalars), and its converter."""
    hints = _hints(cls)
    plan = []
    for f in dataclasses.fields(cls):
        desc = descriptor.fields_by_name.get(f.name)
        if desc is None:  # fields the message lacks are left at their defaults
            continue
        presence = not desc.is_repeated and (desc.message_type is not None or desc.has_presence)
        plan.append((f.name, presence, _converter(hints[f.name], desc)))
    return plan


def from_message(msg: Message, cls: type[T]) -> T:
    """Build the dataclass `cls` from `msg`; fields the dataclass lacks are ignored."""
    kwargs: dict[str, Any] = {}
    for name, presence, convert in _decoder(cls, msg.DESCRIPTOR):  # type: ignore[arg-type]
        if presence and not msg.HasField(name):
            continue  # unset stays the dataclass default (None)
        value = getattr(msg, name)
        kwargs[name] = value if convert is None else convert(value)
    return cls(**kwargs)


# ---- the envelope ---------------------------------------------------------------------------

_ONEOF = pb.RunEvent.DESCRIPTOR.oneofs_by_name["body"]
# body class name -> oneof field name, e.g. RunRequested -> run_requested
_FIELD_BY_BODY: dict[type, str] = {}
_BODY_BY_FIELD: dict[str, type] = {}
for _f in _ONEOF.fields:
    _cls = getattr(ev, _f.message_type.name)
    _FIELD_BY_BODY[_cls] = _f.name
    _BODY_BY_FIELD[_f.name] = _cls
assert set(_FIELD_BY_BODY) == set(ev.KINDS), "proto oneof and domain bodies disagree"


def event_to_pb(event: ev.RunEvent) -> pb.RunEvent:
    msg = pb.RunEvent(
        event_id=event.event_id,
        run_id=event.run_id,
        export_name=event.export_name,
        attempt=event.attempt,
        event_version=event.event_version,
    )
    msg.occurred_at.FromDatetime(event.occurred_at.astimezone(UTC))
    to_message(event.producer, msg.producer)
    if event.resources is not None:
        to_message(event.resources, msg.resources)
    to_message(event.body, getattr(msg, _FIELD_BY_BODY[type(event.body)]))
    return msg


def event_from_pb(msg: pb.RunEvent) -> ev.RunEvent:
    which = msg.WhichOneof("body")
    if which is None:
        raise Poison(f"event {msg.event_id[:80]!r} has no body (unknown kind?)")
    cls = _BODY_BY_FIELD[which]
    return ev.RunEvent(
        event_id=msg.event_id,
        run_id=msg.run_id,
        export_name=msg.export_name,
        occurred_at=msg.occurred_at.ToDatetime(tzinfo=UTC),
        body=from_message(getattr(msg, which), cls),
        producer=from_message(msg.producer, ev.Producer),
        attempt=msg.attempt,
        resources=from_message(msg.resources, ev.ResourceUsage)
        if msg.HasField("resources")
        else None,
        event_version=msg.event_version,
    )


def encode(event: ev.RunEvent) -> bytes:
    data: bytes = event_to_pb(event).SerializeToString(deterministic=True)
    return data


def decode(data: bytes, subject: str | None = None) -> ev.RunEvent:
    """Bytes -> RunEvent, or Poison for anything this version can never read. With `subject`
    (where the message is stored: `<ns>.runs.<run_id>.<kind>[.<chunk>]`), the event must also
    belong to the run that the subject names."""
    msg = pb.RunEvent()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise Poison(f"undecodable RunEvent ({len(data)} bytes): {exc}") from exc
    if not msg.event_id or not msg.run_id:
        raise Poison("RunEvent without event_id or run_id")
    if not RUN_ID_RE.fullmatch(msg.run_id):
        # it would name other runs' subjects (wildcards, dots) or no subject at all
        raise Poison(f"RunEvent with an invalid run_id {msg.run_id[:80]!r}")
    if subject is not None and subject.split(".")[2:3] != [msg.run_id]:
        raise Poison(f"RunEvent of run {msg.run_id!r} stored under {subject[:200]!r}")
    try:
        return event_from_pb(msg)
    except Poison:
        raise
    except (KeyError, ValueError, OverflowError, TypeError) as exc:
        # a value this version cannot represent: an enum number from a newer producer, a
        # timestamp outside datetime's range
        raise Poison(
            f"RunEvent {msg.event_id[:80]!r} holds a value this version cannot read "
            f"({type(exc).__name__}: {str(exc)[:200]})"
        ) from exc


def encode_task(task: ev.ChunkTask) -> bytes:
    data: bytes = to_message(task, pb.ChunkTask()).SerializeToString(deterministic=True)
    return data


def decode_task(data: bytes) -> ev.ChunkTask:
    msg = pb.ChunkTask()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise Poison(f"undecodable ChunkTask ({len(data)} bytes): {exc}") from exc
    if not msg.run_id:
        raise Poison("ChunkTask without run_id")
    return from_message(msg, ev.ChunkTask)


def timestamp(dt: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(dt.astimezone(UTC))
    return ts
