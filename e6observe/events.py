"""Strategy events and the bounded ring that keeps the latest of them.

An :class:`Event` is the in-process form of ``e6observe.v1.StrategyEvent`` (proto/). The ring
never grows past its capacity; events it overwrites are counted, so ``emitted == len(ring) +
evicted`` always holds and no event leaves the accounting silently.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import deque
from typing import Any, Iterator, Optional

from .metrics import CLUSTER_EVENT_KINDS, EVENT_KINDS


class Event:
    """One strategy event. Field names follow ``proto/e6observe/v1/events.proto``."""

    __slots__ = (
        "seq",
        "kind",
        "time_unix",
        "pid",
        "from_strategy",
        "to_strategy",
        "cause",
        "drain_seconds",
        "pinned_queries",
        "strategy",
        "method",
        "attempt",
        "reason",
        "scope",
        "outcome",
        "duration_seconds",
        "cluster_status",
    )

    def __init__(
        self,
        seq: int,
        kind: str,
        *,
        from_strategy: str = "",
        to_strategy: str = "",
        cause: str = "",
        drain_seconds: Optional[float] = None,
        pinned_queries: int = 0,
        strategy: str = "",
        method: str = "",
        attempt: int = 0,
        reason: str = "",
        time_unix: Optional[float] = None,
        pid: Optional[int] = None,
        scope: str = "",
        outcome: str = "",
        duration_seconds: Optional[float] = None,
        cluster_status: str = "",
    ) -> None:
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        self.seq = seq
        self.kind = kind
        self.time_unix = time.time() if time_unix is None else time_unix
        self.pid = os.getpid() if pid is None else pid
        self.from_strategy = from_strategy
        self.to_strategy = to_strategy
        self.cause = cause
        self.drain_seconds = drain_seconds
        self.pinned_queries = pinned_queries
        self.strategy = strategy
        self.method = method
        self.attempt = attempt
        self.reason = reason
        self.scope = scope
        self.outcome = outcome
        self.duration_seconds = duration_seconds
        self.cluster_status = cluster_status

    @property
    def name(self) -> str:
        """The OpenTelemetry event name: ``e6data.strategy.<kind>``, or ``e6data.cluster.<kind>``
        for the auto-resume kinds."""
        if self.kind in CLUSTER_EVENT_KINDS:
            return "e6data.cluster." + self.kind
        return "e6data.strategy." + self.kind

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with the proto field names; empty fields are left out."""
        out: dict[str, Any] = {
            "seq": self.seq,
            "kind": self.kind,
            "time_unix": self.time_unix,
            "pid": self.pid,
        }
        for key in (
            "from_strategy",
            "to_strategy",
            "cause",
            "strategy",
            "method",
            "reason",
            "scope",
            "outcome",
            "cluster_status",
        ):
            value = getattr(self, key)
            if value:
                out[key] = value
        if self.drain_seconds is not None:
            out["drain_seconds"] = self.drain_seconds
        if self.pinned_queries:
            out["pinned_queries"] = self.pinned_queries
        if self.attempt:
            out["attempt"] = self.attempt
        if self.duration_seconds is not None:
            out["duration_seconds"] = self.duration_seconds
        return out

    def __repr__(self) -> str:
        return f"Event({self.to_dict()!r})"


class EventRing:
    """The latest ``capacity`` events, thread-safe, with exact accounting of what it evicted."""

    def __init__(self, capacity: int = 1024) -> None:
        if capacity < 1:
            raise ValueError("event ring capacity must be at least 1")
        self._events: deque[Event] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self.capacity = capacity
        self.emitted = 0
        self.evicted = 0

    def reset(self) -> None:
        """Empty, with fresh accounting, a fresh lock and seqs from 1 (a forked child's ring:
        the parent's events and its lock, possibly held at the fork, are the parent's)."""
        self._lock = threading.Lock()
        self._events.clear()
        self._seq = itertools.count(1)
        self.emitted = 0
        self.evicted = 0

    def next_seq(self) -> int:
        return next(self._seq)

    def append(self, event: Event) -> None:
        """Keep ``event``, evicting the oldest when full. An event built with ``seq=0`` gets the
        next seq here, under the lock, so that seq order is the ring's order: a stream resuming
        after the last id it saw cannot miss an event that was appended late."""
        with self._lock:
            if not event.seq:
                event.seq = next(self._seq)
            if len(self._events) == self.capacity:
                self.evicted += 1
            self._events.append(event)
            self.emitted += 1

    def snapshot(self, since_seq: int = 0) -> list[Event]:
        """Events with ``seq > since_seq``, oldest first."""
        with self._lock:
            return [e for e in self._events if e.seq > since_seq]

    def __iter__(self) -> Iterator[Event]:
        return iter(self.snapshot())

    def __len__(self) -> int:
        return len(self._events)
