"""The Prometheus sink: a collector over the recorder in its own registry.

The recorder is driven directly (its event methods and histograms) and the registry scraped in
both exposition formats; the names, labels and help texts are checked against metrics.py."""

from __future__ import annotations

import errno
import socket
from typing import Any, Optional

import pytest
import requests
from helpers import sink_options as opts
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from e6observe import _safe
from e6observe import metrics as M
from e6observe.endpoint.server import MetricsServerError
from e6observe.recorder import Recorder
from e6observe.sinks.prometheus import PrometheusSink
from e6observe.sinks.scrape import build_labels

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(registry: Any) -> Samples:
    text = generate_latest(registry).decode()
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def val(samples: Samples, name: str, **labels: str) -> Optional[float]:
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture
def sink(rec: Recorder) -> Any:
    s = PrometheusSink(rec, opts())
    yield s
    s.close()


@pytest.mark.matrix
def test_fresh_recorder_exposes_the_contract_series(sink: PrometheusSink) -> None:
    s = scrape(sink.registry)
    for strategy in M.STRATEGIES:
        assert val(s, "e6data_strategy_active", strategy=strategy) == 0.0
        assert val(s, "e6data_strategy_pending", strategy=strategy) == 0.0
        assert val(s, "e6data_queries_in_flight", strategy=strategy) == 0.0
    for frm, to in (("blue", "green"), ("green", "blue")):
        for cause in M.SWITCH_CAUSES:
            assert val(s, "e6data_strategy_switches_total", **{"from": frm, "to": to, "cause": cause}) == 0.0
    assert val(s, "e6data_strategy_last_switch_timestamp_seconds") == 0.0
    assert val(s, "e6data_strategy_switch_drain_seconds_count") == 0.0
    version, connector = build_labels()
    assert val(s, "e6observe_build_info", version=version, connector_version=connector) == 1.0
    assert connector[0].isdigit()


@pytest.mark.matrix
def test_every_exposed_name_labels_and_help_come_from_the_metric_table(
    sink: PrometheusSink, rec: Recorder
) -> None:
    rec.detected("blue")
    rec.rpc_histogram("executeStatement", "blue", "OK").observe(0.01)
    rec.retry(1, "mismatch")
    rec.families[M.EVENTS_DROPPED.prom_name].counter("dispatch").inc()
    _safe.record_internal_error("hooks.test")
    allowed = M.exposed_series_names()
    seen_families = set()
    for fam in text_string_to_metric_families(generate_latest(sink.registry).decode()):
        spec = M.BY_PROM_NAME[fam.name]
        seen_families.add(fam.name)
        assert fam.documentation == spec.help
        assert fam.type == spec.kind
        for s in fam.samples:
            assert s.name in allowed, s.name
            assert set(s.labels) - {"le"} == set(spec.labels), (s.name, s.labels)
    expected = {
        M.STRATEGY_ACTIVE,
        M.STRATEGY_PENDING,
        M.SWITCHES,
        M.SWITCH_DRAIN,
        M.LAST_SWITCH,
        M.MISMATCHES,
        M.RPC_DURATION,
        M.QUERY_DURATION,
        M.QUERIES_IN_FLIGHT,
        M.EVENTS,
        M.RETRIES,
        M.INTERNAL_ERRORS,
        M.EVENTS_DROPPED,
        M.BUILD_INFO,
        M.SCOPED_SWITCHES,
        M.CLUSTER_RESUMES,
        M.CLUSTER_RESUME_DURATION,
        M.STRATEGY_REJECTED,
    }
    assert seen_families == {m.prom_name for m in expected}


@pytest.mark.matrix
def test_switch_lifecycle_is_visible_at_once(sink: PrometheusSink, rec: Recorder) -> None:
    rec.detected("blue")
    s = scrape(sink.registry)
    assert val(s, "e6data_strategy_active", strategy="blue") == 1.0
    assert val(s, "e6data_strategy_active", strategy="green") == 0.0

    rec.announced("green")
    s = scrape(sink.registry)
    assert val(s, "e6data_strategy_pending", strategy="green") == 1.0
    assert val(s, "e6data_strategy_pending", strategy="blue") == 0.0

    rec.applied("blue", "green", "announced", pinned_queries=2)
    rec.mismatch("green", "executeStatement")
    rec.applied("green", "blue", "mismatch")
    s = scrape(sink.registry)
    assert val(s, "e6data_strategy_active", strategy="blue") == 1.0
    assert val(s, "e6data_strategy_active", strategy="green") == 0.0
    assert val(s, "e6data_strategy_pending", strategy="green") == 0.0
    assert (
        val(s, "e6data_strategy_switches_total", **{"from": "blue", "to": "green", "cause": "announced"})
        == 1.0
    )
    assert (
        val(s, "e6data_strategy_switches_total", **{"from": "green", "to": "blue", "cause": "mismatch"})
        == 1.0
    )
    assert sum(v for (n, _), v in s.items() if n == "e6data_strategy_switches_total") == 2.0
    assert val(s, "e6data_strategy_mismatches_total", strategy="green", method="executeStatement") == 1.0
    assert val(s, "e6data_strategy_switch_drain_seconds_count") == 1.0  # only the announced one
    assert val(s, "e6data_strategy_last_switch_timestamp_seconds") == rec.last_switch_time > 0
    assert val(s, "e6data_strategy_events_total", kind="applied") == 2.0


@pytest.mark.matrix
def test_histograms_render_cumulative_buckets(sink: PrometheusSink, rec: Recorder) -> None:
    h = rec.rpc_histogram("prepareStatement", "green", "OK")
    values = [0.0002, 0.0007, 0.0007, 0.003, 0.2, 7.0, 42.0]
    for v in values:
        h.observe(v)
    s = scrape(sink.registry)
    labels = dict(method="prepareStatement", strategy="green", code="OK")
    for bound in M.RPC_DURATION_BUCKETS:
        want = sum(1 for v in values if v <= bound)
        le = repr(float(bound))
        assert val(s, "e6data_rpc_duration_seconds_bucket", le=le, **labels) == want, bound
    assert val(s, "e6data_rpc_duration_seconds_bucket", le="+Inf", **labels) == len(values)
    assert val(s, "e6data_rpc_duration_seconds_count", **labels) == len(values)
    assert val(s, "e6data_rpc_duration_seconds_sum", **labels) == pytest.approx(sum(values))

    rec.query_started("green")
    rec.query_started("green")
    rec.query_finished("green", "switch_interrupted", 0.02)
    s = scrape(sink.registry)
    assert val(s, "e6data_queries_in_flight", strategy="green") == 1.0
    assert (
        val(s, "e6data_query_duration_seconds_count", strategy="green", outcome="switch_interrupted") == 1.0
    )
    assert (
        val(
            s,
            "e6data_query_duration_seconds_bucket",
            strategy="green",
            outcome="switch_interrupted",
            le="0.05",
        )
        == 1.0
    )
    assert (
        val(
            s,
            "e6data_query_duration_seconds_bucket",
            strategy="green",
            outcome="switch_interrupted",
            le="0.01",
        )
        == 0.0
    )


def test_exemplars_only_in_openmetrics(sink: PrometheusSink, rec: Recorder) -> None:
    trace, span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    rec.query_finished("blue", "ok", 0.03, (trace, span))
    om = generate_openmetrics(sink.registry).decode()
    line = next(
        x
        for x in om.splitlines()
        if x.startswith("e6data_query_duration_seconds_bucket")
        and 'le="0.05"' in x
        and 'outcome="ok"' in x
        and 'strategy="blue"' in x
    )
    assert f'# {{span_id="{span}",trace_id="{trace}"}} 0.03' in line
    # Only one bucket carries it, and the 0.0.4 text format has none.
    assert sum(trace in x for x in om.splitlines()) == 1
    assert trace not in generate_latest(sink.registry).decode()


def test_endpoint_negotiates_openmetrics_with_exemplars(rec: Recorder) -> None:
    sink = PrometheusSink(rec, opts(prometheus_port=0))
    try:
        sink.start()
        rec.query_finished("green", "ok", 0.2, ("ab" * 16, "cd" * 8))
        url = sink.server.url + "/metrics"
        om = requests.get(url, timeout=5, headers={"Accept": "application/openmetrics-text"})
        assert om.headers["Content-Type"].startswith("application/openmetrics-text")
        assert 'trace_id="' + "ab" * 16 in om.text
        plain = requests.get(url, timeout=5)
        assert "e6data_strategy_active" in plain.text and "trace_id" not in plain.text
    finally:
        sink.close()


@pytest.mark.matrix
def test_unexpected_strategy_is_one_bounded_label(sink: PrometheusSink, rec: Recorder) -> None:
    rec.detected("invalid")
    s = scrape(sink.registry)
    assert val(s, "e6data_strategy_active", strategy="invalid") == 1.0
    assert val(s, "e6data_strategy_active", strategy="blue") == 0.0
    strategies = {dict(lbl)["strategy"] for (n, lbl) in s if n == "e6data_strategy_active"}
    assert strategies <= set(M.STRATEGY_LABELS)


def test_own_registry_never_the_global_one(rec: Recorder) -> None:
    before = {m.name for m in REGISTRY.collect()}
    sink = PrometheusSink(rec, opts())
    try:
        assert sink.registry is not REGISTRY
        assert {m.name for m in REGISTRY.collect()} == before
    finally:
        sink.close()


def test_user_registry_is_used_and_double_registration_refused(rec: Recorder) -> None:
    mine = CollectorRegistry(auto_describe=True)
    sink = PrometheusSink(rec, opts(registry=mine))
    try:
        assert sink.registry is mine
        assert val(scrape(mine), "e6data_strategy_active", strategy="blue") == 0.0
        with pytest.raises(ValueError, match="Duplicated"):
            PrometheusSink(rec, opts(registry=mine))
    finally:
        sink.close()
    assert scrape(mine) == {}  # close() unregistered the collector


def test_a_registry_with_prometheus_clients_own_process_collectors_stays_valid(rec: Recorder) -> None:
    """registry=prometheus_client.REGISTRY is common; its default process/GC collectors export
    the names e6observe's runtime collector uses. Every family must appear once."""
    from prometheus_client import GC_COLLECTOR, PROCESS_COLLECTOR

    from e6observe.runtime import RuntimeCollector

    theirs = CollectorRegistry()
    theirs.register(PROCESS_COLLECTOR)
    theirs.register(GC_COLLECTOR)
    sink = PrometheusSink(rec, opts(registry=theirs))
    try:
        sink.add_process_collector(RuntimeCollector())
        text = generate_latest(theirs).decode()
        types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
        assert len(types) == len(set(types)), sorted(t for t in types if types.count(t) > 1)
        # Theirs kept; e6observe's runtime families they do not have (threads) still exported.
        assert "process_resident_memory_bytes" in types and "python_gc_collections_total" in types
        assert "process_threads" in types
    finally:
        sink.close()
    # Own registry (the default): e6observe's runtime collector exports every family itself.
    own = PrometheusSink(rec, opts())
    try:
        own.add_process_collector(RuntimeCollector())
        assert "process_resident_memory_bytes" in generate_latest(own.registry).decode()
    finally:
        own.close()


def test_other_collectors_share_the_registry(sink: PrometheusSink) -> None:
    from prometheus_client.core import GaugeMetricFamily

    class Watcher:
        def collect(self) -> list[Any]:
            g = GaugeMetricFamily(M.WATCHER_LAST_RUN.prom_name, M.WATCHER_LAST_RUN.help)
            g.add_metric([], 123.0)
            return [g]

    sink.registry.register(Watcher())
    s = scrape(sink.registry)
    assert val(s, "e6observe_watcher_last_run_timestamp_seconds") == 123.0
    assert val(s, "e6data_strategy_active", strategy="green") == 0.0


def test_collect_failures_are_contained_and_counted(sink: PrometheusSink, rec: Recorder) -> None:
    class Broken:
        labels = ("executeStatement", "blue", "OK")
        exemplars: dict[int, Any] = {}

        def snapshot(self) -> Any:
            raise RuntimeError("recorder bug")

    rec.detected("green")
    rec.families[M.RPC_DURATION.prom_name].children[Broken.labels] = Broken()
    before = _safe.internal_errors().get("sink.prometheus", 0)
    s = scrape(sink.registry)  # the scrape itself succeeds
    assert _safe.internal_errors().get("sink.prometheus", 0) > before
    assert val(s, "e6data_strategy_active", strategy="green") == 1.0
    assert val(s, "e6observe_internal_errors_total", component="sink.prometheus") >= before + 1
    # Everything but the broken family still renders.
    assert val(s, "e6data_query_duration_seconds_count", strategy="blue", outcome="ok") == 0.0


def test_unreadable_recorder_still_renders_the_names(sink: PrometheusSink, rec: Recorder) -> None:
    def broken_state() -> dict[str, Any]:
        raise RuntimeError("state bug")

    rec.state = broken_state  # type: ignore[method-assign]
    before = _safe.internal_errors().get("sink.prometheus", 0)
    text = generate_latest(sink.registry).decode()
    assert _safe.internal_errors().get("sink.prometheus", 0) == before + 1
    assert "# TYPE e6data_strategy_active gauge" in text  # names survive, values do not


def test_endpoint_lifecycle_through_the_sink(rec: Recorder) -> None:
    sink = PrometheusSink(rec, opts(prometheus_port=0))
    sink.start()
    sink.start()  # idempotent: one server
    srv = sink.server
    assert srv is not None and srv.url.startswith("http://127.0.0.1:")
    rec.detected("green")
    r = requests.get(srv.url + "/metrics", timeout=5)
    assert 'e6data_strategy_active{strategy="green"} 1.0' in r.text
    port = srv.port
    sink.close()
    sink.close()
    with pytest.raises(ConnectionRefusedError):  # nothing listens there any more
        socket.create_connection(("127.0.0.1", port), timeout=5)


def test_no_port_no_server(sink: PrometheusSink) -> None:
    sink.start()
    assert sink.server is None


def test_taken_port_raises_a_clear_oserror(rec: Recorder) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        sink = PrometheusSink(rec, opts(prometheus_port=port))
        try:
            with pytest.raises(MetricsServerError) as info:
                sink.start()
            assert info.value.errno == errno.EADDRINUSE
            assert f"127.0.0.1:{port}" in str(info.value)
            # The collector is still usable (instrument() keeps going without the endpoint).
            assert val(scrape(sink.registry), "e6data_strategy_active", strategy="blue") == 0.0
        finally:
            sink.close()
