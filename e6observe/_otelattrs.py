"""OpenTelemetry attribute vocabulary shared by the OTel sink's log records and the query spans.

* :func:`rpc_method_names` - the connector's short RPC method names mapped to the fully
  qualified ``Service/method`` that ``rpc.method`` carries;
* :func:`event_attributes` - the attributes of a strategy event, the same on the event's log
  record (``sinks/otel.py``) and on the span event of the queries in flight (``tracing.py``);
* :func:`error_type` and :func:`db_namespace` - a query's ``error.type`` (span and
  ``db.client.operation.duration`` alike) and ``db.namespace``. Here rather than in
  ``tracing.py``, so that the cursor hooks and the metric sink do not load the query tracer's
  module (its regular expressions) in a process without a tracer.
"""

from __future__ import annotations

from typing import Any, Optional

from .events import Event

#: ``error.type`` per query outcome, on the span and on ``db.client.operation.duration`` alike;
#: a successful query carries none. ``_OTHER``: the conventions' value for an error with no
#: more specific low-cardinality type (the gRPC status goes to ``db.response.status_code``).
ERROR_TYPES = {"error": "_OTHER", "switch_interrupted": "switch_interrupted"}


def error_type(outcome: str) -> Optional[str]:
    """The ``error.type`` of a query outcome (None for ``ok``): one mapping for span and metric."""
    return None if outcome in ("ok", "resumed") else ERROR_TYPES.get(outcome, "_OTHER")


def db_namespace(catalog: object, database: object) -> Optional[str]:
    """``db.namespace``: ``catalog|database`` (most general first), or whichever is set."""
    parts = [p for p in (catalog, database) if isinstance(p, str) and p]
    return "|".join(parts)[:256] if parts else None


def rpc_method_names() -> dict[str, str]:
    """Short method name -> fully-qualified ``Service/method`` (``rpc.method``)."""
    try:
        from e6data_python_connector.server import e6x_engine_pb2 as pb

        out: dict[str, str] = {}
        for svc in pb.DESCRIPTOR.services_by_name.values():
            for m in svc.methods:
                out.setdefault(m.name, f"{svc.full_name}/{m.name}")
        for m in ("status", "resume", "suspend"):  # the cluster manager's ClusterService
            out["cluster." + m] = "ClusterService/" + m
        return out
    except Exception:  # pragma: no cover - connector missing or changed
        return {}


def event_attributes(ev: Event, rpc_names: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """The log-record attributes of ``ev`` (only the fields its kind sets)."""
    attrs: dict[str, Any] = {"e6data.event.seq": ev.seq, "e6data.event.kind": ev.kind}
    if ev.strategy:
        attrs["e6data.strategy"] = ev.strategy
    if ev.from_strategy:
        attrs["e6data.strategy.from"] = ev.from_strategy
    if ev.to_strategy:
        attrs["e6data.strategy.to"] = ev.to_strategy
    if ev.kind == "applied":
        attrs["e6data.switch.cause"] = ev.cause
        attrs["e6data.switch.pinned_queries"] = ev.pinned_queries
        if ev.drain_seconds is not None:
            attrs["e6data.switch.drain_time"] = ev.drain_seconds
    if ev.method:
        attrs["rpc.method"] = (rpc_names or {}).get(ev.method, "_OTHER")
    if ev.kind == "retry":
        attrs["e6data.retry.attempt"] = ev.attempt
        attrs["e6data.retry.reason"] = ev.reason
    if ev.scope:
        attrs["e6data.strategy.scope"] = ev.scope
    if ev.cluster_status:
        attrs["e6data.cluster.status"] = ev.cluster_status
    if ev.kind == "resume_finished":
        attrs["e6data.cluster.resume.outcome"] = ev.outcome
        if ev.duration_seconds is not None:
            attrs["e6data.cluster.resume.duration"] = ev.duration_seconds
    if ev.kind == "strategy_rejected":
        attrs["e6data.strategy.rejected.reason"] = ev.reason
    return attrs


__all__ = ["rpc_method_names", "event_attributes", "error_type", "db_namespace", "ERROR_TYPES"]
