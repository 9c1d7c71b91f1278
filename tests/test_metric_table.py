"""The metric table is the one list of what e6observe exports, and every sink exports all of it.

Each entry of ``e6observe.metrics`` names its source and its OpenTelemetry instrument kind; the
sinks derive what they render from those fields. The test drives one instrumented process
(real connector, simulator, a real connection pool), records one value into every recorder
family the way its recorder call does, and then looks for every table entry on a Prometheus
scrape, in an OpenTelemetry in-memory reader and on the multi-process merged scrape. An entry
added to the table that a sink does not export fails here; so does a source a sink forgot.
The probe's entries are exported by the ``e6observe probe`` command's own collector and meter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from conftest import PASSWORD, USER
from helpers import wait_for
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import e6observe
from e6observe import _safe
from e6observe import metrics as M
from e6observe.config import Options
from e6observe.recorder import Recorder

pytestmark = pytest.mark.timeout(90)

#: A valid value for every label name the table uses (so the multi-process merge keeps it).
EXAMPLE = {
    "strategy": "blue",
    "from": "blue",
    "to": "green",
    "cause": "observed",
    "scope": "connection",
    "method": "executeStatement",
    "code": "OK",
    "outcome": "ok",
    "kind": "applied",
    "reason": "other",
    "component": "test.table",
    "sink": "otlp",
    "pool": "table-pool",
    "result": "ok",
}


def sample_names(registry: CollectorRegistry) -> set[str]:
    text = generate_latest(registry).decode()
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def otel_names(reader: InMemoryMetricReader) -> set[str]:
    data = reader.get_metrics_data()
    return {
        m.name
        for rm in (data.resource_metrics if data is not None else ())
        for sm in rm.scope_metrics
        for m in sm.metrics
        if list(m.data.data_points)
    }


def record_every_recorder_family(rec: Recorder) -> None:
    """One value in each recorder counter and histogram (what each one's recorder call does)."""
    for spec in M.ALL:
        if spec.source != "recorder":
            continue
        labels = tuple(EXAMPLE[n] for n in spec.labels)
        if spec.kind == "counter":
            rec.family(spec).counter(*labels).inc()
        else:
            rec.family(spec).histogram(*labels).observe(spec.buckets[0])


def missing_on_prometheus(names: set[str], specs: Any) -> list[str]:
    return [s.prom_name for s in specs if not set(s.exposed_names) <= names]


@pytest.fixture
def instrumented(sim: Any, connect: Callable[..., Any]) -> Iterator[Callable[..., Any]]:
    """``start(**options)`` -> (recorder, registry, reader): instrumented, with a query run,
    a pool used, an internal error counted and a value in every recorder family."""
    from e6data_python_connector.connection_pool import ConnectionPool

    pools: list[Any] = []
    providers: list[Any] = []

    def start(**options: Any) -> tuple[Recorder, CollectorRegistry, InMemoryMetricReader]:
        _safe.reset_for_tests()
        registry, reader = CollectorRegistry(), InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        providers.append(provider)
        rec = e6observe.instrument(
            registry=registry,
            meter_provider=provider,
            logger_provider=None,
            runtime_metrics=True,
            watcher_interval=0.05,
            **options,
        )
        assert rec is not None
        cur = connect().cursor()
        cur.execute("SELECT 1")
        cur.fetchall()
        cur.clear()
        pool = ConnectionPool(
            host=sim.host,
            port=sim.port,
            username=USER,
            password=PASSWORD,
            min_size=1,
            max_size=2,
            max_overflow=0,
        )
        pools.append(pool)
        e6observe.hooks.pool.name_pool(pool, EXAMPLE["pool"])
        pool.return_connection(pool.get_connection())
        _safe.record_internal_error("test.table", RuntimeError("counted on purpose"))
        record_every_recorder_family(rec)
        return rec, registry, reader

    yield start
    e6observe.uninstrument()
    for p in pools:
        p.close_all()
    for provider in providers:
        provider.shutdown()


def test_every_entry_names_a_source_and_an_instrument_kind() -> None:
    assert {s.source for s in M.ALL} == set(M.SOURCES)  # every source has an entry
    for s in M.ALL:
        assert s.source in M.SOURCES and s.otel_kind in M.OTEL_KINDS, s.prom_name
        assert s.otel_kind == s.kind or (s.kind == "gauge" and s.otel_kind == "updown"), s
    with pytest.raises(ValueError, match="e6data_x"):
        M.MetricSpec("e6data_x", None, "counter", "1", "h", source="nowhere")


def test_the_sinks_render_what_the_table_says() -> None:
    from e6observe.sinks import scrape

    assert scrape.COUNTERS == tuple(s for s in M.ALL if s.source == "recorder" and s.kind == "counter")
    assert scrape.HISTOGRAMS == tuple(s for s in M.ALL if s.source == "recorder" and s.kind == "histogram")
    assert M.SWITCHES in scrape.COUNTERS and M.RPC_DURATION in scrape.HISTOGRAMS


def test_every_entry_is_exported_by_prometheus_and_opentelemetry(instrumented: Callable[..., Any]) -> None:
    _, registry, reader = instrumented()
    specs = [s for s in M.ALL if s.source != "probe"]
    wait_for(lambda: not missing_on_prometheus(sample_names(registry), specs), timeout=20.0)
    assert missing_on_prometheus(sample_names(registry), specs) == []
    want = {s.otel_name for s in specs if s.otel_name}
    wait_for(lambda: want <= otel_names(reader), timeout=20.0)
    assert sorted(want - otel_names(reader)) == []


def test_every_entry_is_exported_by_the_multiprocess_merge(
    instrumented: Callable[..., Any], tmp_path: Path
) -> None:
    _, registry, _ = instrumented(multiprocess_dir=str(tmp_path))
    specs = [s for s in M.ALL if s.source != "probe"]
    # Per-process readings reach the merged scrape through this process's state file, which
    # the watcher publishes once per interval.
    wait_for(lambda: not missing_on_prometheus(sample_names(registry), specs), timeout=20.0)
    assert missing_on_prometheus(sample_names(registry), specs) == []
    text = generate_latest(registry).decode()
    assert 'process_threads{pid="' in text  # a reading, merged: labelled with its process


def test_the_probe_entries_are_exported_by_the_probe(sim: Any) -> None:
    from e6observe.cli._connopts import ConnectionOptions, Credentials
    from e6observe.cli.probe import ProbeCollector, Prober, register_otel
    from e6observe.sinks.otel import OtelSink

    rec = Recorder()
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    prober = Prober(
        ConnectionOptions(host=sim.host, port=sim.port, credentials=Credentials(USER, PASSWORD)),
        rec,
        interval=1.0,
    )
    sink = OtelSink(rec, Options(meter_provider=provider))
    sink.start()
    try:
        register_otel(prober, provider.get_meter("test"))
        prober.probe_once()
        registry = CollectorRegistry()
        registry.register(ProbeCollector(prober))
        specs = M.of("probe")
        assert missing_on_prometheus(sample_names(registry), specs) == []
        assert {s.otel_name for s in specs} <= otel_names(reader)
    finally:
        prober.stop()
        sink.close()
        provider.shutdown()
        rec.stop()
