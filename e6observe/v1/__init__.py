"""e6observe's event schema, version 1 (``proto/e6observe/v1/events.proto``).

``events_pb2`` is generated (``scripts/regen-proto``; never edit it by hand) and imports with
every protobuf the package supports (4.21 and later). ``convert`` turns the in-process
:class:`e6observe.events.Event` and the recorder's state into these messages and back.

Importing this package imports protobuf, so nothing on the hot path does.
"""

from __future__ import annotations

from .events_pb2 import (
    EventAccounting,
    EventKind,
    LatencySummary,
    MemoryStats,
    Source,
    StatusSnapshot,
    StrategyEvent,
    SwitchCount,
    WatcherStatus,
)

__all__ = [
    "EventAccounting",
    "EventKind",
    "LatencySummary",
    "MemoryStats",
    "Source",
    "StatusSnapshot",
    "StrategyEvent",
    "SwitchCount",
    "WatcherStatus",
]
