"""The low-cardinality exposition (``prometheus_low_cardinality=True``): about 55 series per process.

A full scrape of an instrumented process that switches colour carries 400 to 450 series (RPC
latency per method, status code and colour; query latency per outcome; the resume, drain and
pool histograms; runtime metrics). At a thousand pods that is 0.4 M series in one Prometheus.
This option keeps what the blue/green dashboard's switch, mismatch and latency-per-colour panels
and the switch alerts read, summed over every other label, and drops the rest:

===================================================== ==========================================
family                                                kept
===================================================== ==========================================
``e6data_strategy_active``, ``_pending``               per ``strategy``
``e6data_queries_in_flight``                          per ``strategy``
``e6data_strategy_switches_total``                    per ``from``, ``to``, ``cause``
``e6data_strategy_mismatches_total``                  per ``strategy`` (methods summed)
``e6data_strategy_pending_age_seconds``,              one series each
``e6data_strategy_last_switch_timestamp_seconds``
``e6data_query_duration_seconds``                     buckets per ``strategy`` (latency per
                                                      colour); ``_count`` per ``strategy`` and
                                                      ``outcome`` (query rate, failures,
                                                      queries failed mid-switch); no ``_sum``
``e6data_rpc_duration_seconds``                       ``_count`` and ``_sum`` per ``strategy``
                                                      (the mismatch share of RPCs); no buckets
``e6data_strategy_switch_drain_seconds``              ``_count`` and ``_sum`` (mean drain time)
``e6observe_build_info``, ``e6observe_internal_errors``  as they are
``e6observe_watcher_last_run_timestamp_seconds``,      as they are
``process_resident_memory_bytes``
===================================================== ==========================================

Everything else (RPC latency per method, the resume and pool families, the cluster status,
GC and other runtime figures) is left out of the scrape; those dashboard panels show no data.
OpenTelemetry export is not affected. In multi-process mode the ``pid`` label of per-process
families is kept.

The seam is one wrapper around the registry the endpoint serves (:class:`LowCardinalityRegistry`):
the recorder, the sinks and every collector are unchanged, and the reduction happens at
exposition time, per scrape, over the families they yield.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional

from prometheus_client.metrics_core import Metric

from .. import metrics as M

#: Labels always kept where present (multi-process mode's per-process families).
ALWAYS = ("pid",)
#: None: every label kept.
_ALL = None

#: family name -> {sample suffix: kept labels (None: all)}; a suffix missing is dropped.
KEEP: dict[str, dict[str, Optional[tuple[str, ...]]]] = {
    M.STRATEGY_ACTIVE.prom_name: {"": ("strategy",)},
    M.STRATEGY_PENDING.prom_name: {"": ("strategy",)},
    M.QUERIES_IN_FLIGHT.prom_name: {"": ("strategy",)},
    M.SWITCHES.prom_name: {"_total": ("from", "to", "cause")},
    M.MISMATCHES.prom_name: {"_total": ("strategy",)},
    M.PENDING_AGE.prom_name: {"": ()},
    M.LAST_SWITCH.prom_name: {"": ()},
    M.QUERY_DURATION.prom_name: {"_bucket": ("strategy", "le"), "_count": ("strategy", "outcome")},
    M.RPC_DURATION.prom_name: {"_count": ("strategy",), "_sum": ("strategy",)},
    M.SWITCH_DRAIN.prom_name: {"_count": (), "_sum": ()},
    M.BUILD_INFO.prom_name: {"": _ALL},
    M.INTERNAL_ERRORS.prom_name: {"_total": _ALL},
    M.WATCHER_LAST_RUN.prom_name: {"": _ALL},
    "process_resident_memory_bytes": {"": _ALL},
}


def reduce(families: Iterable[Metric]) -> Iterator[Metric]:
    """The families of :data:`KEEP`, each sample summed over the labels not kept."""
    for fam in families:
        keep = KEEP.get(fam.name)
        if keep is None:
            continue
        out = Metric(fam.name, fam.documentation, fam.type, fam.unit)
        sums: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for s in fam.samples:
            suffix = s.name[len(fam.name) :]
            if suffix not in keep:
                continue
            kept = keep[suffix]
            if kept is None:
                labels = tuple(s.labels.items())
            else:
                labels = tuple((k, v) for k, v in s.labels.items() if k in kept or k in ALWAYS)
            key = (s.name, labels)
            sums[key] = sums.get(key, 0.0) + s.value
        for (name, labels), value in sums.items():
            out.add_sample(name, dict(labels), value)
        yield out


class LowCardinalityRegistry:
    """What the endpoint serves instead of ``registry``: its families through :func:`reduce`.

    Has what prometheus_client's exposition calls on a registry: ``collect()`` and
    ``restricted_registry(names)`` (the ``?name[]=`` filter).
    """

    def __init__(self, registry: Any) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        return reduce(self.registry.collect())

    def restricted_registry(self, names: Iterable[str]) -> LowCardinalityRegistry:
        return LowCardinalityRegistry(self.registry.restricted_registry(names))
