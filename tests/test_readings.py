"""Readers produce readings keyed by the metric table's specs; the sinks render them.

``e6observe.readings`` renders any reader's readings for Prometheus (a collector) and
OpenTelemetry (observable instruments of each spec's ``otel_kind``); ``e6observe.readers``
holds the package's own readers. Also here: what the watcher asks of the strategy-cache hook
(through its functions, not ``sys.modules``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import pytest
from e6data_python_connector import e6data_grpc as g
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from e6observe import _safe
from e6observe import metrics as M
from e6observe.hooks import HookContext
from e6observe.hooks import strategy_cache as sc
from e6observe.readings import Readings, ReadingsCollector, register_otel
from e6observe.recorder import Recorder

PACKAGE = Path(__file__).resolve().parent.parent / "e6observe"


def scrape(collector: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reg = CollectorRegistry()
    reg.register(collector)
    out = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def sample_reading() -> Readings:
    return {
        M.POOL_CONNECTIONS: [(("p", "idle"), 2.0), (("p", "used"), 1.0)],
        M.CACHE_SPLIT: [((), 1.0)],
        M.PROBES: [(("ok",), 3.0)],
        M.POOL_WAIT_TIME: [(("p",), [[1] + [0] * len(M.POOL_TIME_BUCKETS), 0.0004])],
    }


SPECS = (M.POOL_CONNECTIONS, M.CACHE_SPLIT, M.PROBES, M.POOL_WAIT_TIME, M.POOL_MAX)


@pytest.fixture
def meter() -> Iterator[tuple[Any, InMemoryMetricReader]]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield provider.get_meter("test"), reader
    provider.shutdown()


def collected(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    return {
        m.name: m
        for rm in (data.resource_metrics if data is not None else ())
        for sm in rm.scope_metrics
        for m in sm.metrics
    }


def test_prometheus_renders_every_kind_with_the_tables_names_and_labels() -> None:
    s = scrape(ReadingsCollector(SPECS, sample_reading, "test.read"))
    assert s[("e6data_pool_connections", (("pool", "p"), ("state", "idle")))] == 2.0
    assert s[("e6data_strategy_cache_split", ())] == 1.0
    assert s[("e6data_probes_total", (("result", "ok"),))] == 3.0
    assert s[("e6data_pool_wait_time_seconds_bucket", (("le", "0.0005"), ("pool", "p")))] == 1.0
    assert s[("e6data_pool_wait_time_seconds_count", (("pool", "p"),))] == 1.0
    # A spec the reader left out renders no family at all.
    assert not any(name.startswith("e6data_pool_max") for name, _ in s)


def test_a_failing_reader_is_counted_under_its_component_and_renders_nothing() -> None:
    _safe.reset_for_tests()

    def broken() -> Readings:
        raise RuntimeError("injected")

    assert scrape(ReadingsCollector(SPECS, broken, "test.read")) == {}
    assert _safe.internal_errors() == {"test.read": 1}


def test_opentelemetry_instruments_take_the_specs_kind_and_attribute_names(
    meter: tuple[Any, InMemoryMetricReader],
) -> None:
    m, reader = meter
    calls: list[int] = []

    def read() -> Readings:
        calls.append(1)
        return sample_reading()

    instruments = register_otel(m, SPECS, read, "test.otel")
    assert len(instruments) == 4  # not the histogram: fed to OpenTelemetry from the recorder
    got = collected(reader)
    assert len(calls) == 1  # the callbacks of one collection share one reading
    count = got["db.client.connection.count"]
    assert M.POOL_CONNECTIONS.otel_kind == "updown" and not count.data.is_monotonic
    assert {(tuple(sorted(p.attributes.items())), p.value) for p in count.data.data_points} == {
        ((("db.client.connection.pool.name", "p"), ("db.client.connection.state", "idle")), 2),
        ((("db.client.connection.pool.name", "p"), ("db.client.connection.state", "used")), 1),
    }
    assert got["e6data.probes"].data.is_monotonic
    assert [p.value for p in got["e6data.strategy.cache_split"].data.data_points] == [1.0]
    assert "db.client.connection.max" not in got  # nothing read for it: no point


def test_opentelemetry_callbacks_are_silent_while_disabled(meter: tuple[Any, InMemoryMetricReader]) -> None:
    m, reader = meter
    on = {"v": False}
    register_otel(m, SPECS, sample_reading, "test.otel", enabled=lambda: on["v"])
    assert not any(list(x.data.data_points) for x in collected(reader).values())
    on["v"] = True
    assert "e6data.probes" in collected(reader)


def test_the_strategy_cache_hook_tells_the_watcher_what_cache_a_holds() -> None:
    assert (sc.reporting(), sc.known_strategy()) == (False, None)
    rec = Recorder()
    assert sc.HOOK.install(HookContext(rec))
    try:
        assert (sc.reporting(), sc.known_strategy()) == (True, None)
        g._set_active_strategy("blue")
        assert sc.known_strategy() == "blue"
        sc.note_observed("green")  # a switch the watcher counted
        assert sc.known_strategy() == "green"
    finally:
        sc.HOOK.uninstall()
        rec.stop()
    assert (sc.reporting(), sc.known_strategy()) == (False, None)


def test_no_module_looks_up_another_of_the_package_through_sys_modules() -> None:
    pattern = re.compile(r"sys\.modules(?:\.get\(|\[)\s*[\"'](?:e6observe\b|\.)")
    hits = [
        f"{p.relative_to(PACKAGE.parent)}:{n}"
        for p in sorted(PACKAGE.rglob("*.py"))
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []
