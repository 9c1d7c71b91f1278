"""The Prometheus scrape model: what one scrape shows, read from the recorder, and its rendering.

Nothing here sits on the hot path and nothing is kept in prometheus_client metric objects a
thread would have to refresh: every scrape reads the recorder (bucket counts, counters, the
blue/green state, ``_safe.internal_errors()``) and builds ``prometheus_client.core`` metric
families from it. Names, labels, help texts and buckets come only from ``e6observe.metrics``:
the families rendered here are the table's ``recorder``, ``state``, ``internal`` and ``build``
entries.

:func:`render` renders a :class:`View` — the state of one process (:func:`view_of`), or
(multi-process mode, ``sinks/multiprocess.py``) the merge of every worker's state — so both
modes share one renderer and expose the same families; multi-process mode adds a ``pid`` label
to the live per-process gauges. The sink that serves it is ``sinks/prometheus.py``.

Failures are contained per family (``sink.prometheus``): a bug renders what it can and counts
itself in ``e6observe_internal_errors_total`` instead of failing the scrape.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

from .. import metrics as M
from .._safe import contain, internal_errors

#: Recorder families rendered by this sink: the table's ``source="recorder"`` entries (pool,
#: probe and runtime metrics belong to the readers their owners register into
#: ``PrometheusSink.registry``).
COUNTERS: tuple[M.MetricSpec, ...] = M.COUNTERS
HISTOGRAMS: tuple[M.MetricSpec, ...] = M.HISTOGRAMS

Labels = tuple[str, ...]
#: bucket index -> (trace_id, span_id, value, unix time)
ExemplarMap = dict[int, tuple[str, str, float, float]]


class ProcessState:
    """The live blue/green gauges of one process."""

    __slots__ = ("pid", "active", "pending", "in_flight")

    def __init__(
        self, pid: Optional[int], active: Optional[str], pending: Optional[str], in_flight: dict[str, int]
    ) -> None:
        self.pid = pid
        self.active = active
        self.pending = pending
        self.in_flight = in_flight


class View:
    """What one scrape renders: counters and histograms (summed), gauges per live process."""

    __slots__ = (
        "counters",
        "histograms",
        "exemplars",
        "internal_errors",
        "last_switch_time",
        "processes",
        "per_pid",
        "families",
    )

    def __init__(self, per_pid: bool = False) -> None:
        self.counters: dict[str, dict[Labels, float]] = {s.prom_name: {} for s in COUNTERS}
        #: name -> labels -> [per-bucket counts (last is +Inf), sum]
        self.histograms: dict[str, dict[Labels, list[Any]]] = {s.prom_name: {} for s in HISTOGRAMS}
        self.exemplars: dict[str, dict[Labels, ExemplarMap]] = {}
        self.internal_errors: dict[str, float] = {}
        self.last_switch_time = 0.0
        self.processes: list[ProcessState] = []
        self.per_pid = per_pid
        #: Multi-process only: families of per-process collectors (runtime, watcher, pools) by
        #: name -> (type, help, [(pid, sample name, labels, value)]), rendered with ``pid``.
        self.families: dict[str, tuple[str, str, list[tuple[int, str, dict[str, str], float]]]] = {}


def view_of(recorder: Any) -> View:
    """The View of one recorder (this process), read now; a part that fails is left out."""
    v = View()
    fams = recorder.families
    for spec in COUNTERS:
        with contain("sink.prometheus"):
            fam = fams.get(spec.prom_name)
            if fam is not None:
                v.counters[spec.prom_name] = {labels: c.value for labels, c in fam.items()}
    for spec in HISTOGRAMS:
        with contain("sink.prometheus"):
            fam = fams.get(spec.prom_name)
            if fam is not None:
                v.histograms[spec.prom_name], ex = _histogram_rows(fam)
                if ex:
                    v.exemplars[spec.prom_name] = ex
    with contain("sink.prometheus"):
        st = recorder.state()
        v.last_switch_time = float(st.get("last_switch_time") or 0.0)
        v.processes.append(
            ProcessState(None, st.get("active"), st.get("pending"), dict(st.get("in_flight") or {}))
        )
    return v


def _histogram_rows(fam: Any) -> tuple[dict[Labels, list[Any]], dict[Labels, ExemplarMap]]:
    rows: dict[Labels, list[Any]] = {}
    exemplars: dict[Labels, ExemplarMap] = {}
    for labels, h in fam.items():
        counts, total, _ = h.snapshot()
        rows[labels] = [counts, total]
        if h.exemplars:
            exemplars[labels] = dict(h.exemplars)
    return rows, exemplars


# -- rendering ------------------------------------------------------------------------------
_LE: dict[tuple[float, ...], list[str]] = {}


def _le(bounds: tuple[float, ...]) -> list[str]:
    le = _LE.get(bounds)
    if le is None:
        le = [floatToGoString(b) for b in bounds]  # type: ignore[no-untyped-call]
        le.append("+Inf")
        _LE[bounds] = le
    return le


def histogram_family(
    spec: M.MetricSpec, rows: dict[Labels, list[Any]], exemplars: Optional[dict[Labels, ExemplarMap]] = None
) -> Metric:
    """A HistogramMetricFamily from per-bucket counts: rendered cumulative, exemplars attached."""
    fam = HistogramMetricFamily(spec.prom_name, spec.help, labels=spec.labels, unit="")
    le = _le(spec.buckets)
    for labels, (counts, total) in sorted(rows.items()):
        ex = exemplars.get(labels) if exemplars else None
        buckets: list[Any] = []
        acc = 0
        for i, n in enumerate(counts):
            acc += n
            e = ex.get(i) if ex else None
            if e is not None:
                buckets.append((le[i], acc, Exemplar({"trace_id": e[0], "span_id": e[1]}, e[2], e[3])))
            else:
                buckets.append((le[i], acc))
        fam.add_metric(list(labels), buckets, total)
    return fam


def counter_family(spec: M.MetricSpec, rows: dict[Labels, float]) -> Metric:
    fam = CounterMetricFamily(spec.prom_name, spec.help, labels=spec.labels)
    for labels, value in sorted(rows.items()):
        fam.add_metric(list(labels), value)
    return fam


def _strategies(active: Optional[str]) -> tuple[str, ...]:
    # blue and green always; a non-blue/green value (``invalid``, ``none``) only while it holds,
    # and only from the bounded label set.
    if active and active not in M.STRATEGIES and active in M.STRATEGY_LABELS:
        return M.STRATEGIES + (active,)
    return M.STRATEGIES


def _gauge(spec: M.MetricSpec, per_pid: bool, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
    labels = spec.labels + extra + (("pid",) if per_pid else ())
    return GaugeMetricFamily(spec.prom_name, spec.help, labels=labels)


def _pid(p: ProcessState, per_pid: bool) -> list[str]:
    return [str(p.pid)] if per_pid else []


def _active(v: View) -> Metric:
    fam = _gauge(M.STRATEGY_ACTIVE, v.per_pid)
    for p in v.processes:
        for s in _strategies(p.active):
            fam.add_metric([s] + _pid(p, v.per_pid), 1.0 if p.active == s else 0.0)
    return fam


def _pending(v: View) -> Metric:
    fam = _gauge(M.STRATEGY_PENDING, v.per_pid)
    for p in v.processes:
        for s in _strategies(p.pending):
            fam.add_metric([s] + _pid(p, v.per_pid), 1.0 if p.pending == s else 0.0)
    return fam


def _in_flight(v: View) -> Metric:
    fam = _gauge(M.QUERIES_IN_FLIGHT, v.per_pid)
    for p in v.processes:
        for s in M.STRATEGY_LABELS:
            fam.add_metric([s] + _pid(p, v.per_pid), float(p.in_flight.get(s, 0)))
    return fam


def _last_switch(v: View) -> Metric:
    fam = GaugeMetricFamily(M.LAST_SWITCH.prom_name, M.LAST_SWITCH.help)
    fam.add_metric([], v.last_switch_time)
    return fam


def _internal(v: View) -> Metric:
    fam = CounterMetricFamily(
        M.INTERNAL_ERRORS.prom_name, M.INTERNAL_ERRORS.help, labels=M.INTERNAL_ERRORS.labels
    )
    for component, n in sorted(v.internal_errors.items()):
        fam.add_metric([component], n)
    return fam


_BUILD: Optional[tuple[str, str]] = None


def build_labels() -> tuple[str, str]:
    """(e6observe version, installed connector version), read once."""
    global _BUILD
    if _BUILD is None:
        from .._version import __version__, connector_version

        _BUILD = (__version__, (connector_version() or "unknown")[:32])
    return _BUILD


def _build_info(_v: View) -> Metric:
    fam = GaugeMetricFamily(M.BUILD_INFO.prom_name, M.BUILD_INFO.help, labels=M.BUILD_INFO.labels)
    fam.add_metric(list(build_labels()), 1.0)
    return fam


def _per_process_families(v: View) -> Iterable[Metric]:
    for name, (typ, doc, samples) in sorted(v.families.items()):
        fam = Metric(name, doc, typ)
        for pid, sname, labels, value in samples:
            fam.add_sample(sname, dict(labels, pid=str(pid)), value)
        yield fam


def render(v: View, component: str = "sink.prometheus") -> list[Metric]:
    """Every family of the View; a family that fails to render is counted and left out."""
    out: list[Metric] = []
    for spec in COUNTERS:
        with contain(component):
            out.append(counter_family(spec, v.counters.get(spec.prom_name, {})))
    for spec in HISTOGRAMS:
        with contain(component):
            out.append(
                histogram_family(spec, v.histograms.get(spec.prom_name, {}), v.exemplars.get(spec.prom_name))
            )
    for fn in (_active, _pending, _in_flight, _last_switch, _build_info):
        with contain(component):
            out.append(fn(v))
    if v.per_pid:
        with contain(component):
            out.extend(_per_process_families(v))
    # Last, so that errors counted while rendering this very scrape are already in it (the
    # merged multi-process view carries its own, summed, counts).
    with contain(component):
        if not v.per_pid:
            v.internal_errors = dict(internal_errors())
        out.append(_internal(v))
    return out


def describe_families(per_pid: bool = False) -> list[Metric]:
    """Empty families naming everything the collector exposes (for duplicate detection)."""
    v = View(per_pid=per_pid)
    return render(v)


class RecorderCollector:
    """prometheus_client collector over one process's recorder, computed at scrape time."""

    def __init__(self, recorder: Any) -> None:
        self.recorder = recorder

    def describe(self) -> list[Metric]:
        return describe_families()

    def collect(self) -> list[Metric]:
        return render(view_of(self.recorder))


__all__ = [
    "View",
    "ProcessState",
    "view_of",
    "render",
    "describe_families",
    "histogram_family",
    "counter_family",
    "build_labels",
    "RecorderCollector",
    "COUNTERS",
    "HISTOGRAMS",
]
