from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_DETECTED: _ClassVar[EventKind]
    EVENT_KIND_ANNOUNCED: _ClassVar[EventKind]
    EVENT_KIND_APPLIED: _ClassVar[EventKind]
    EVENT_KIND_MISMATCH: _ClassVar[EventKind]
    EVENT_KIND_CACHE_CLEARED: _ClassVar[EventKind]
    EVENT_KIND_RETRY: _ClassVar[EventKind]
    EVENT_KIND_SUSPENDED_SEEN: _ClassVar[EventKind]
    EVENT_KIND_RESUME_STARTED: _ClassVar[EventKind]
    EVENT_KIND_RESUME_FINISHED: _ClassVar[EventKind]
    EVENT_KIND_STRATEGY_REJECTED: _ClassVar[EventKind]
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_DETECTED: EventKind
EVENT_KIND_ANNOUNCED: EventKind
EVENT_KIND_APPLIED: EventKind
EVENT_KIND_MISMATCH: EventKind
EVENT_KIND_CACHE_CLEARED: EventKind
EVENT_KIND_RETRY: EventKind
EVENT_KIND_SUSPENDED_SEEN: EventKind
EVENT_KIND_RESUME_STARTED: EventKind
EVENT_KIND_RESUME_FINISHED: EventKind
EVENT_KIND_STRATEGY_REJECTED: EventKind

class Source(_message.Message):
    __slots__ = ("service_name", "service_instance_id", "host_name", "pid", "e6observe_version", "connector_version", "python_version")
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICE_INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_NAME_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    E6OBSERVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONNECTOR_VERSION_FIELD_NUMBER: _ClassVar[int]
    PYTHON_VERSION_FIELD_NUMBER: _ClassVar[int]
    service_name: str
    service_instance_id: str
    host_name: str
    pid: int
    e6observe_version: str
    connector_version: str
    python_version: str
    def __init__(self, service_name: _Optional[str] = ..., service_instance_id: _Optional[str] = ..., host_name: _Optional[str] = ..., pid: _Optional[int] = ..., e6observe_version: _Optional[str] = ..., connector_version: _Optional[str] = ..., python_version: _Optional[str] = ...) -> None: ...

class StrategyEvent(_message.Message):
    __slots__ = ("seq", "kind", "time_unix", "pid", "from_strategy", "to_strategy", "cause", "drain_seconds", "pinned_queries", "strategy", "method", "attempt", "reason", "source", "scope", "outcome", "duration_seconds", "cluster_status")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    FROM_STRATEGY_FIELD_NUMBER: _ClassVar[int]
    TO_STRATEGY_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    DRAIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PINNED_QUERIES_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_STATUS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    kind: EventKind
    time_unix: float
    pid: int
    from_strategy: str
    to_strategy: str
    cause: str
    drain_seconds: float
    pinned_queries: int
    strategy: str
    method: str
    attempt: int
    reason: str
    source: Source
    scope: str
    outcome: str
    duration_seconds: float
    cluster_status: str
    def __init__(self, seq: _Optional[int] = ..., kind: _Optional[_Union[EventKind, str]] = ..., time_unix: _Optional[float] = ..., pid: _Optional[int] = ..., from_strategy: _Optional[str] = ..., to_strategy: _Optional[str] = ..., cause: _Optional[str] = ..., drain_seconds: _Optional[float] = ..., pinned_queries: _Optional[int] = ..., strategy: _Optional[str] = ..., method: _Optional[str] = ..., attempt: _Optional[int] = ..., reason: _Optional[str] = ..., source: _Optional[_Union[Source, _Mapping]] = ..., scope: _Optional[str] = ..., outcome: _Optional[str] = ..., duration_seconds: _Optional[float] = ..., cluster_status: _Optional[str] = ...) -> None: ...

class SwitchCount(_message.Message):
    __slots__ = ("from_strategy", "to_strategy", "cause", "count")
    FROM_STRATEGY_FIELD_NUMBER: _ClassVar[int]
    TO_STRATEGY_FIELD_NUMBER: _ClassVar[int]
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    from_strategy: str
    to_strategy: str
    cause: str
    count: int
    def __init__(self, from_strategy: _Optional[str] = ..., to_strategy: _Optional[str] = ..., cause: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class ScopedSwitchCount(_message.Message):
    __slots__ = ("from_strategy", "to_strategy", "scope", "count")
    FROM_STRATEGY_FIELD_NUMBER: _ClassVar[int]
    TO_STRATEGY_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    from_strategy: str
    to_strategy: str
    scope: str
    count: int
    def __init__(self, from_strategy: _Optional[str] = ..., to_strategy: _Optional[str] = ..., scope: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class ClusterState(_message.Message):
    __slots__ = ("status", "status_unix", "resumes", "resuming", "last_resume_outcome", "last_resume_seconds")
    class ResumesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_UNIX_FIELD_NUMBER: _ClassVar[int]
    RESUMES_FIELD_NUMBER: _ClassVar[int]
    RESUMING_FIELD_NUMBER: _ClassVar[int]
    LAST_RESUME_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    LAST_RESUME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    status: str
    status_unix: float
    resumes: _containers.ScalarMap[str, int]
    resuming: bool
    last_resume_outcome: str
    last_resume_seconds: float
    def __init__(self, status: _Optional[str] = ..., status_unix: _Optional[float] = ..., resumes: _Optional[_Mapping[str, int]] = ..., resuming: bool = ..., last_resume_outcome: _Optional[str] = ..., last_resume_seconds: _Optional[float] = ...) -> None: ...

class StrategyCaches(_message.Message):
    __slots__ = ("process", "cluster_manager", "split")
    PROCESS_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_MANAGER_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    process: str
    cluster_manager: str
    split: bool
    def __init__(self, process: _Optional[str] = ..., cluster_manager: _Optional[str] = ..., split: bool = ...) -> None: ...

class LatencySummary(_message.Message):
    __slots__ = ("kind", "strategy", "count", "sum_seconds", "p50_seconds", "p90_seconds", "p99_seconds")
    KIND_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SUM_SECONDS_FIELD_NUMBER: _ClassVar[int]
    P50_SECONDS_FIELD_NUMBER: _ClassVar[int]
    P90_SECONDS_FIELD_NUMBER: _ClassVar[int]
    P99_SECONDS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    strategy: str
    count: int
    sum_seconds: float
    p50_seconds: float
    p90_seconds: float
    p99_seconds: float
    def __init__(self, kind: _Optional[str] = ..., strategy: _Optional[str] = ..., count: _Optional[int] = ..., sum_seconds: _Optional[float] = ..., p50_seconds: _Optional[float] = ..., p90_seconds: _Optional[float] = ..., p99_seconds: _Optional[float] = ...) -> None: ...

class MemoryStats(_message.Message):
    __slots__ = ("rss_bytes", "vms_bytes", "uss_bytes")
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    VMS_BYTES_FIELD_NUMBER: _ClassVar[int]
    USS_BYTES_FIELD_NUMBER: _ClassVar[int]
    rss_bytes: int
    vms_bytes: int
    uss_bytes: int
    def __init__(self, rss_bytes: _Optional[int] = ..., vms_bytes: _Optional[int] = ..., uss_bytes: _Optional[int] = ...) -> None: ...

class WatcherStatus(_message.Message):
    __slots__ = ("running", "last_run_unix", "interval_seconds")
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    LAST_RUN_UNIX_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    running: bool
    last_run_unix: float
    interval_seconds: float
    def __init__(self, running: bool = ..., last_run_unix: _Optional[float] = ..., interval_seconds: _Optional[float] = ...) -> None: ...

class EventAccounting(_message.Message):
    __slots__ = ("emitted", "in_ring", "evicted", "dropped")
    class DroppedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    EMITTED_FIELD_NUMBER: _ClassVar[int]
    IN_RING_FIELD_NUMBER: _ClassVar[int]
    EVICTED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    emitted: int
    in_ring: int
    evicted: int
    dropped: _containers.ScalarMap[str, int]
    def __init__(self, emitted: _Optional[int] = ..., in_ring: _Optional[int] = ..., evicted: _Optional[int] = ..., dropped: _Optional[_Mapping[str, int]] = ...) -> None: ...

class StatusSnapshot(_message.Message):
    __slots__ = ("time_unix", "source", "active", "pending", "pending_age_seconds", "last_switch_unix", "switch_count", "switches", "mismatch_count", "in_flight", "latency", "memory", "watcher", "recent_events", "events", "internal_errors", "cluster", "caches", "scoped_switches", "strategy_rejected")
    class InFlightEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class InternalErrorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class StrategyRejectedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TIME_UNIX_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    PENDING_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LAST_SWITCH_UNIX_FIELD_NUMBER: _ClassVar[int]
    SWITCH_COUNT_FIELD_NUMBER: _ClassVar[int]
    SWITCHES_FIELD_NUMBER: _ClassVar[int]
    MISMATCH_COUNT_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    WATCHER_FIELD_NUMBER: _ClassVar[int]
    RECENT_EVENTS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    INTERNAL_ERRORS_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    CACHES_FIELD_NUMBER: _ClassVar[int]
    SCOPED_SWITCHES_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_REJECTED_FIELD_NUMBER: _ClassVar[int]
    time_unix: float
    source: Source
    active: str
    pending: str
    pending_age_seconds: float
    last_switch_unix: float
    switch_count: int
    switches: _containers.RepeatedCompositeFieldContainer[SwitchCount]
    mismatch_count: int
    in_flight: _containers.ScalarMap[str, int]
    latency: _containers.RepeatedCompositeFieldContainer[LatencySummary]
    memory: MemoryStats
    watcher: WatcherStatus
    recent_events: _containers.RepeatedCompositeFieldContainer[StrategyEvent]
    events: EventAccounting
    internal_errors: _containers.ScalarMap[str, int]
    cluster: ClusterState
    caches: StrategyCaches
    scoped_switches: _containers.RepeatedCompositeFieldContainer[ScopedSwitchCount]
    strategy_rejected: _containers.ScalarMap[str, int]
    def __init__(self, time_unix: _Optional[float] = ..., source: _Optional[_Union[Source, _Mapping]] = ..., active: _Optional[str] = ..., pending: _Optional[str] = ..., pending_age_seconds: _Optional[float] = ..., last_switch_unix: _Optional[float] = ..., switch_count: _Optional[int] = ..., switches: _Optional[_Iterable[_Union[SwitchCount, _Mapping]]] = ..., mismatch_count: _Optional[int] = ..., in_flight: _Optional[_Mapping[str, int]] = ..., latency: _Optional[_Iterable[_Union[LatencySummary, _Mapping]]] = ..., memory: _Optional[_Union[MemoryStats, _Mapping]] = ..., watcher: _Optional[_Union[WatcherStatus, _Mapping]] = ..., recent_events: _Optional[_Iterable[_Union[StrategyEvent, _Mapping]]] = ..., events: _Optional[_Union[EventAccounting, _Mapping]] = ..., internal_errors: _Optional[_Mapping[str, int]] = ..., cluster: _Optional[_Union[ClusterState, _Mapping]] = ..., caches: _Optional[_Union[StrategyCaches, _Mapping]] = ..., scoped_switches: _Optional[_Iterable[_Union[ScopedSwitchCount, _Mapping]]] = ..., strategy_rejected: _Optional[_Mapping[str, int]] = ...) -> None: ...
