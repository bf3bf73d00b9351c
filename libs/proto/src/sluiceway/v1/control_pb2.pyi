import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from sluiceway.v1 import events_pb2 as _events_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConfigDocument(_message.Message):
    __slots__ = ("text", "export_name", "base_dir", "file_name")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    EXPORT_NAME_FIELD_NUMBER: _ClassVar[int]
    BASE_DIR_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    text: str
    export_name: str
    base_dir: str
    file_name: str
    def __init__(self, text: _Optional[str] = ..., export_name: _Optional[str] = ..., base_dir: _Optional[str] = ..., file_name: _Optional[str] = ...) -> None: ...

class SubmitRunRequest(_message.Message):
    __slots__ = ("spec", "config", "requested_by", "options", "priority")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    spec: _events_pb2.ExportSpec
    config: ConfigDocument
    requested_by: str
    options: _containers.ScalarMap[str, str]
    priority: int
    def __init__(self, spec: _Optional[_Union[_events_pb2.ExportSpec, _Mapping]] = ..., config: _Optional[_Union[ConfigDocument, _Mapping]] = ..., requested_by: _Optional[str] = ..., options: _Optional[_Mapping[str, str]] = ..., priority: _Optional[int] = ...) -> None: ...

class SubmitRunResponse(_message.Message):
    __slots__ = ("run_id", "export_name", "stream_seq")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    EXPORT_NAME_FIELD_NUMBER: _ClassVar[int]
    STREAM_SEQ_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    export_name: str
    stream_seq: int
    def __init__(self, run_id: _Optional[str] = ..., export_name: _Optional[str] = ..., stream_seq: _Optional[int] = ...) -> None: ...

class PlanRunRequest(_message.Message):
    __slots__ = ("spec", "config")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    spec: _events_pb2.ExportSpec
    config: ConfigDocument
    def __init__(self, spec: _Optional[_Union[_events_pb2.ExportSpec, _Mapping]] = ..., config: _Optional[_Union[ConfigDocument, _Mapping]] = ...) -> None: ...

class PlanRunResponse(_message.Message):
    __slots__ = ("plan", "warnings", "spec")
    PLAN_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    plan: _events_pb2.PlanResolved
    warnings: _containers.RepeatedCompositeFieldContainer[_events_pb2.PlanWarning]
    spec: _events_pb2.ExportSpec
    def __init__(self, plan: _Optional[_Union[_events_pb2.PlanResolved, _Mapping]] = ..., warnings: _Optional[_Iterable[_Union[_events_pb2.PlanWarning, _Mapping]]] = ..., spec: _Optional[_Union[_events_pb2.ExportSpec, _Mapping]] = ...) -> None: ...

class CancelRunRequest(_message.Message):
    __slots__ = ("run_id", "reason", "requested_by")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    reason: str
    requested_by: str
    def __init__(self, run_id: _Optional[str] = ..., reason: _Optional[str] = ..., requested_by: _Optional[str] = ...) -> None: ...

class CancelRunResponse(_message.Message):
    __slots__ = ("run_id", "stream_seq")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STREAM_SEQ_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    stream_seq: int
    def __init__(self, run_id: _Optional[str] = ..., stream_seq: _Optional[int] = ...) -> None: ...

class ApplySchedulesRequest(_message.Message):
    __slots__ = ("specs", "applied_by")
    SPECS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_BY_FIELD_NUMBER: _ClassVar[int]
    specs: _containers.RepeatedCompositeFieldContainer[_events_pb2.ExportSpec]
    applied_by: str
    def __init__(self, specs: _Optional[_Iterable[_Union[_events_pb2.ExportSpec, _Mapping]]] = ..., applied_by: _Optional[str] = ...) -> None: ...

class ScheduleInfo(_message.Message):
    __slots__ = ("spec", "revision", "next", "change")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    spec: _events_pb2.ExportSpec
    revision: int
    next: _containers.RepeatedCompositeFieldContainer[_timestamp_pb2.Timestamp]
    change: str
    def __init__(self, spec: _Optional[_Union[_events_pb2.ExportSpec, _Mapping]] = ..., revision: _Optional[int] = ..., next: _Optional[_Iterable[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]]] = ..., change: _Optional[str] = ...) -> None: ...

class ApplySchedulesResponse(_message.Message):
    __slots__ = ("schedules",)
    SCHEDULES_FIELD_NUMBER: _ClassVar[int]
    schedules: _containers.RepeatedCompositeFieldContainer[ScheduleInfo]
    def __init__(self, schedules: _Optional[_Iterable[_Union[ScheduleInfo, _Mapping]]] = ...) -> None: ...

class ListSchedulesRequest(_message.Message):
    __slots__ = ("upcoming",)
    UPCOMING_FIELD_NUMBER: _ClassVar[int]
    upcoming: int
    def __init__(self, upcoming: _Optional[int] = ...) -> None: ...

class ListSchedulesResponse(_message.Message):
    __slots__ = ("schedules",)
    SCHEDULES_FIELD_NUMBER: _ClassVar[int]
    schedules: _containers.RepeatedCompositeFieldContainer[ScheduleInfo]
    def __init__(self, schedules: _Optional[_Iterable[_Union[ScheduleInfo, _Mapping]]] = ...) -> None: ...

class InstalledSchedule(_message.Message):
    __slots__ = ("spec", "installed_at", "installed_by", "installed_team")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    INSTALLED_AT_FIELD_NUMBER: _ClassVar[int]
    INSTALLED_BY_FIELD_NUMBER: _ClassVar[int]
    INSTALLED_TEAM_FIELD_NUMBER: _ClassVar[int]
    spec: _events_pb2.ExportSpec
    installed_at: _timestamp_pb2.Timestamp
    installed_by: str
    installed_team: str
    def __init__(self, spec: _Optional[_Union[_events_pb2.ExportSpec, _Mapping]] = ..., installed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., installed_by: _Optional[str] = ..., installed_team: _Optional[str] = ...) -> None: ...
