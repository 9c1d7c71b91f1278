"""Conversions between e6observe's in-process objects and the ``e6observe.v1`` messages.

- :func:`event_to_proto` / :func:`event_from_proto`: :class:`~e6observe.events.Event` <->
  ``StrategyEvent`` (lossless, except that a proto ``kind`` outside the known set is refused).
- :func:`status_snapshot`: the recorder's state -> ``StatusSnapshot`` (what the status endpoint
  serves); :func:`to_json_dict` renders any message as JSON-ready plain values.
- :func:`histogram_quantile`: a quantile estimated from bucket counts, as Prometheus'
  ``histogram_quantile`` does; the demo's live view and the snapshot's latency use it.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
import time
from typing import Any, Mapping, Optional, cast

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

# histogram_quantile and merged_histogram live in a leaf module (no protobuf), so the status
# page's latency history does not load the proto runtime at instrument(); re-exported here.
from .. import metrics as M
from .._quantile import histogram_quantile, merged_histogram
from .._version import __version__, connector_version
from ..events import Event
from . import events_pb2 as pb

_KIND_TO_PROTO: dict[str, int] = {k: pb.EventKind.Value("EVENT_KIND_" + k.upper()) for k in M.EVENT_KINDS}
_KIND_FROM_PROTO = {v: k for k, v in _KIND_TO_PROTO.items()}


def kind_to_proto(kind: str) -> int:
    """``"applied"`` -> ``EVENT_KIND_APPLIED``. Raises ``ValueError`` for an unknown kind."""
    try:
        return _KIND_TO_PROTO[kind]
    except KeyError:
        raise ValueError(f"unknown event kind {kind!r}") from None


def kind_from_proto(value: int) -> str:
    """``EVENT_KIND_APPLIED`` -> ``"applied"``. Raises ``ValueError`` for UNSPECIFIED/unknown."""
    try:
        return _KIND_FROM_PROTO[value]
    except KeyError:
        raise ValueError(f"event kind {value!r} has no e6observe.events.Event form") from None


def event_to_proto(ev: Event, source: Optional[pb.Source] = None) -> pb.StrategyEvent:
    """The ``StrategyEvent`` for ``ev``; ``source`` is attached when given."""
    msg = pb.StrategyEvent(
        seq=ev.seq,
        kind=cast(Any, kind_to_proto(ev.kind)),
        time_unix=ev.time_unix,
        pid=ev.pid,
        from_strategy=ev.from_strategy,
        to_strategy=ev.to_strategy,
        cause=ev.cause,
        pinned_queries=ev.pinned_queries,
        strategy=ev.strategy,
        method=ev.method,
        attempt=ev.attempt,
        reason=ev.reason,
        scope=ev.scope,
        outcome=ev.outcome,
        cluster_status=ev.cluster_status,
    )
    if ev.drain_seconds is not None:
        msg.drain_seconds = ev.drain_seconds
    if ev.duration_seconds is not None:
        msg.duration_seconds = ev.duration_seconds
    if source is not None:
        msg.source.CopyFrom(source)
    return msg


def event_from_proto(msg: pb.StrategyEvent) -> Event:
    """The :class:`Event` for ``msg`` (its ``source``, if any, is not part of an Event)."""
    return Event(
        msg.seq,
        kind_from_proto(msg.kind),
        from_strategy=msg.from_strategy,
        to_strategy=msg.to_strategy,
        cause=msg.cause,
        drain_seconds=msg.drain_seconds if msg.HasField("drain_seconds") else None,
        pinned_queries=msg.pinned_queries,
        strategy=msg.strategy,
        method=msg.method,
        attempt=msg.attempt,
        reason=msg.reason,
        time_unix=msg.time_unix,
        pid=msg.pid,
        scope=msg.scope,
        outcome=msg.outcome,
        duration_seconds=msg.duration_seconds if msg.HasField("duration_seconds") else None,
        cluster_status=msg.cluster_status,
    )


def program_name() -> str:
    """The running program's name, for a process that was given no ``OTEL_SERVICE_NAME``:
    ``app.py`` for ``python app.py``, ``e6observe`` for the command or ``python -m e6observe``,
    ``python`` when there is nothing better (``python -c``, an interactive session)."""
    argv0 = sys.argv[0] if getattr(sys, "argv", None) else ""
    if not argv0 or argv0 in ("-c", "-m", "-"):
        return "python"
    base = os.path.basename(argv0)
    if base in ("__main__.py", "__init__.py"):  # python -m package
        base = os.path.basename(os.path.dirname(os.path.abspath(argv0))) or base
    return base[:-3] if base.endswith(".py") and base[:-3] else base


def source_info(
    service_name: Optional[str] = None, resource_attributes: Optional[Mapping[str, Any]] = None
) -> pb.Source:
    """This process as a ``Source``: names from an OpenTelemetry resource's attributes when
    given (``service.name``, ``service.instance.id``, ``host.name``), else from the
    environment (``OTEL_SERVICE_NAME``) and the host."""
    attrs = dict(resource_attributes or {})
    name = service_name or attrs.get("service.name") or os.environ.get("OTEL_SERVICE_NAME")
    if not name or str(name).startswith("unknown_service"):
        name = program_name()
    return pb.Source(
        service_name=str(name),
        service_instance_id=str(attrs.get("service.instance.id", "")),
        host_name=str(attrs.get("host.name") or socket.gethostname()),
        pid=os.getpid(),
        e6observe_version=__version__,
        connector_version=connector_version(),
        python_version=platform.python_version(),
    )


def latency_summaries(recorder: Any) -> list[pb.LatencySummary]:
    """Query and RPC latency per strategy (every outcome / method / code merged)."""
    out = []
    for kind, spec, idx in (("query", M.QUERY_DURATION, 0), ("rpc", M.RPC_DURATION, 1)):
        children = recorder.family(spec).items()
        for strategy in M.STRATEGY_LABELS:
            counts, total, n = merged_histogram(children, idx, strategy)
            if not n:
                continue
            out.append(
                pb.LatencySummary(
                    kind=kind,
                    strategy=strategy,
                    count=n,
                    sum_seconds=total,
                    p50_seconds=histogram_quantile(0.5, spec.buckets, counts),
                    p90_seconds=histogram_quantile(0.9, spec.buckets, counts),
                    p99_seconds=histogram_quantile(0.99, spec.buckets, counts),
                )
            )
    return out


# -- status snapshot -------------------------------------------------------------------------
def status_snapshot(
    recorder: Any,
    *,
    source: Optional[pb.Source] = None,
    recent_events: int = 50,
    memory: Optional[Mapping[str, int]] = None,
    watcher: Optional[Mapping[str, Any]] = None,
    internal_errors: Optional[Mapping[str, int]] = None,
    now: Optional[float] = None,
) -> pb.StatusSnapshot:
    """The ``StatusSnapshot`` of ``recorder``.

    ``memory`` (``rss_bytes``/``vms_bytes``/``uss_bytes``) and ``watcher`` (``running``,
    ``last_run_unix``, ``interval_seconds``) come from their owners (runtime stats, the watcher
    thread); ``internal_errors`` defaults to ``e6observe._safe.internal_errors()``.
    """
    now = time.time() if now is None else now
    state = recorder.state()
    pending_since = state["pending_since"]
    snap = pb.StatusSnapshot(
        time_unix=now,
        active=state["active"] or "none",
        pending=state["pending"] or "",
        pending_age_seconds=max(0.0, now - pending_since) if pending_since else 0.0,
        last_switch_unix=state["last_switch_time"] or 0.0,
    )
    if source is not None:
        snap.source.CopyFrom(source)
    switch_total = 0
    for (frm, to, cause), child in sorted(recorder.family(M.SWITCHES).items()):
        n = int(child.value)
        switch_total += n
        snap.switches.add(from_strategy=frm, to_strategy=to, cause=cause, count=n)
    snap.switch_count = switch_total
    snap.mismatch_count = int(sum(c.value for _, c in recorder.family(M.MISMATCHES).items()))
    for strategy, n in state["in_flight"].items():
        if n or strategy in M.STRATEGIES:
            snap.in_flight[strategy] = int(n)
    snap.latency.extend(latency_summaries(recorder))
    if memory:
        snap.memory.CopyFrom(pb.MemoryStats(**{k: int(v) for k, v in memory.items()}))
    if watcher:
        snap.watcher.CopyFrom(pb.WatcherStatus(**dict(watcher)))
    ring = recorder.ring
    events = ring.snapshot()
    for ev in events[-recent_events:] if recent_events > 0 else []:
        snap.recent_events.append(event_to_proto(ev))
    snap.events.emitted = ring.emitted
    snap.events.in_ring = len(events)
    snap.events.evicted = ring.evicted
    for (sink,), child in recorder.family(M.EVENTS_DROPPED).items():
        snap.events.dropped[sink] = int(child.value)
    if internal_errors is None:
        from .._safe import internal_errors as _ie

        internal_errors = _ie()
    for component, n in internal_errors.items():
        snap.internal_errors[component] = int(n)
    _cluster_and_caches(recorder, snap)
    return snap


def _cluster_and_caches(recorder: Any, snap: pb.StatusSnapshot) -> None:
    """The auto-resume and second-cache parts of the snapshot (hooks/cluster.py)."""
    cl = snap.cluster
    cl.status = getattr(recorder, "cluster_status", "unknown")
    cl.status_unix = getattr(recorder, "cluster_status_time", 0.0)
    for (outcome,), child in sorted(recorder.family(M.CLUSTER_RESUMES).items()):
        cl.resumes[outcome] = int(child.value)
    cl.resuming = bool(recorder.resuming())
    last = getattr(recorder, "last_resume", None)
    if last is not None:
        cl.last_resume_outcome, cl.last_resume_seconds = last[0], float(last[1])
    process = recorder.state()["active"] or "none"
    cm = getattr(recorder, "cluster_manager_active", None) or "none"
    snap.caches.process = process
    snap.caches.cluster_manager = cm
    snap.caches.split = process in M.STRATEGIES and cm in M.STRATEGIES and process != cm
    for (frm, to, scope), child in sorted(recorder.family(M.SCOPED_SWITCHES).items()):
        if child.value:
            snap.scoped_switches.add(from_strategy=frm, to_strategy=to, scope=scope, count=int(child.value))
    for (reason,), child in sorted(recorder.family(M.STRATEGY_REJECTED).items()):
        snap.strategy_rejected[reason] = int(child.value)


_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def to_json_dict(msg: Message) -> dict[str, Any]:
    """``msg`` as JSON-ready plain values, proto field names, every field present.

    Unlike ``json_format.MessageToDict``, 64-bit integers stay numbers (the proto3 JSON mapping
    writes them as strings; ``json_format.ParseDict`` accepts either), so a reader of the
    status endpoint sees ``"switch_count": 3``. ``ParseDict`` of the result gives ``msg`` back.
    """
    try:  # protobuf >= 5.26 renamed the option
        d = json_format.MessageToDict(
            msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
    except TypeError:  # protobuf 4.x
        d = json_format.MessageToDict(
            msg, preserving_proto_field_name=True, including_default_value_fields=True
        )
    _ints_back(msg.DESCRIPTOR, d)
    return cast("dict[str, Any]", d)


def _ints_back(desc: Any, d: dict[str, Any]) -> None:
    for field in desc.fields:
        if field.name not in d:
            continue
        value = d[field.name]
        sub = field.message_type
        if sub is not None and sub.GetOptions().map_entry:
            vfield = sub.fields_by_name["value"]
            if vfield.type in _INT64_TYPES:
                d[field.name] = {k: int(v) for k, v in value.items()}
            elif vfield.message_type is not None:
                for v in value.values():
                    _ints_back(vfield.message_type, v)
        elif sub is not None:
            for item in value if isinstance(value, list) else [value]:
                _ints_back(sub, item)
        elif field.type in _INT64_TYPES:
            d[field.name] = [int(v) for v in value] if isinstance(value, list) else int(value)


__all__ = [
    "kind_to_proto",
    "kind_from_proto",
    "event_to_proto",
    "event_from_proto",
    "source_info",
    "histogram_quantile",
    "merged_histogram",
    "latency_summaries",
    "status_snapshot",
    "to_json_dict",
]
