"""A failure inside e6observe costs the application nothing but a counter increment.

For every hook, the recorder, the event ring, every sink (Prometheus collection, OpenTelemetry
metrics and log records, spans), the status routes, the event subscribers and the watcher, one of
e6observe's own functions is made to raise (the connector is never touched). A deterministic
client script (``chaos.scenario``: rows through every fetch style, query errors, injected RPC
faults, an announced switch, an abrupt switch between execute and fetch, a fake 456, a simulator
restart) must then give the application exactly what it gives without e6observe - same rows,
same exception types, codes and details - and each fault must be counted in
``e6observe_internal_errors_total{component}`` and logged once, not once per call.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Callable, Iterator

import pytest
from chaos import Rig, http_get, scenario
from e6data_python_connector import e6data_grpc
from helpers import PASSWORD, USER, reset_connector_cache

from e6observe import _safe
from e6observe.sim import Simulator

pytestmark = pytest.mark.timeout(120)


class Injected(RuntimeError):
    """The failure injected into e6observe's own code."""


def _run_scenario() -> list[tuple[Any, ...]]:
    with Simulator(port=0) as sim:
        conn = e6data_grpc.Connection(host=sim.host, port=sim.port, username=USER, password=PASSWORD)
        try:
            return scenario(sim, conn)
        finally:
            conn.close()


@pytest.fixture(scope="module")
def baseline() -> list[tuple[Any, ...]]:
    """What the application sees with no e6observe at all."""
    reset_connector_cache()
    try:
        return _run_scenario()
    finally:
        reset_connector_cache()


def test_the_baseline_exercises_errors_switches_and_recovery(baseline: list[tuple[Any, ...]]) -> None:
    # The comparison below is only as strong as the script: make sure it reaches the paths.
    kinds = [o[0] for o in baseline]
    raised = {(o[2], o[3]) for o in baseline if o[0] == "raised"}
    assert ("UNKNOWN", "status: 456") in raised  # the abrupt switch cut a cursor
    assert ("UNAVAILABLE", "injected") in raised and ("RESOURCE_EXHAUSTED", "injected") in raised
    assert ("INTERNAL", "simulated query failure") in raised
    assert [o[1] for o in baseline if o[0] == "active"] == ["green", "blue", "blue"]
    assert kinds.count("ok") >= 10


# target "module:attr" -> every component its failure is counted under (the first is the
# one it must hit at least ``MIN_COUNT`` times, default 2: "once per call" would show there).
FAULTS: dict[str, tuple[str, ...]] = {
    # hooks, through the recorder they write to
    "e6observe.recorder:Recorder.rpc_histogram": ("hook.channel",),
    "e6observe.recorder:Histogram.observe": ("hook.channel", "hook.cursor"),
    "e6observe.recorder:Recorder.query_started": ("hook.cursor",),
    "e6observe.recorder:Recorder.query_finished": ("hook.cursor",),
    "e6observe.recorder:Recorder.detected": ("hook.strategy_cache",),
    "e6observe.recorder:Recorder.announced": ("hook.strategy_cache",),
    "e6observe.recorder:Recorder.applied": ("hook.strategy_cache",),
    "e6observe.recorder:Recorder.cache_cleared": ("hook.strategy_cache",),
    "e6observe.recorder:Recorder.mismatch": ("hook.channel",),
    "e6observe.recorder:Recorder.retry": ("hook.cursor",),
    # the event ring, written by every strategy event
    "e6observe.events:EventRing.append": ("hook.strategy_cache", "hook.channel", "hook.cursor"),
    # the hooks' own helpers
    "e6observe.hooks.strategy_cache:_Interpreter._on_active": ("hook.strategy_cache",),
    "e6observe.hooks.strategy_cache:_Interpreter._on_pending": ("hook.strategy_cache",),
    "e6observe.hooks.strategy_cache:_pinned": ("hook.strategy_cache",),
    "e6observe.hooks.channel:wrap_stub": ("hook.channel",),
    "e6observe.hooks.stubs:norm_code": ("hook.channel",),
    "e6observe.hooks.cursor:_pinned_strategy": ("hook.cursor",),
    "e6observe.hooks.cursor:retry_reason": ("hook.cursor",),
    # query spans
    "e6observe.tracing:QueryTracer.start": ("hook.cursor",),
    "e6observe.tracing:QueryTracer.finish": ("hook.cursor",),
    # event subscribers (span events, OpenTelemetry log records, the /events notifier)
    "e6observe.tracing:QueryTracer._on_event": ("event.subscriber",),
    "e6observe.sinks.otel:OtelSink._on_event": ("event.subscriber",),
    "e6observe.sinks.otel:_log_record": ("sink.otel.logs",),
    "e6observe.endpoint.status:_Notifier.__call__": ("event.subscriber",),
    # OpenTelemetry metric collection
    "e6observe.sinks.otel:OtelSink._drain": ("sink.otel.metrics",),
    "e6observe.sinks.otel:OtelSink._observe_counter": ("sink.otel.metrics",),
    # Prometheus collection (a broken recorder read also breaks /status: a 500, counted)
    "e6observe.sinks.scrape:_histogram_rows": ("sink.prometheus",),
    "e6observe.sinks.scrape:counter_family": ("sink.prometheus",),
    "e6observe.recorder:Recorder.state": ("sink.prometheus", "server", "sink.otel.metrics"),
    "e6observe.watcher:Watcher.readings": ("watcher.collect", "watcher.otel"),
    # the status page's JSON
    "e6observe.endpoint.status:build_status": ("server",),
    # the watcher thread's iteration
    "e6observe.watcher:Watcher.run_once": ("watcher",),
}
#: Faults whose code runs once per scenario (the first strategy learned, one announcement...).
ONCE = {
    "e6observe.recorder:Recorder.detected",
    "e6observe.recorder:Recorder.announced",
    "e6observe.sinks.otel:OtelSink._drain",
    "e6observe.recorder:Recorder.state",
    "e6observe.watcher:Watcher.readings",
    "e6observe.endpoint.status:build_status",
    "e6observe.hooks.strategy_cache:_Interpreter._on_pending",
}

# Faults run together in groups whose components are disjoint, so every count is still
# attributable to exactly one fault (checked below). A group never pairs a fault that stops
# events (the ring) with one that needs them (subscribers).
GROUPS: list[list[str]] = [
    [
        "e6observe.recorder:Recorder.rpc_histogram",
        "e6observe.recorder:Recorder.query_started",
        "e6observe.recorder:Recorder.detected",
        "e6observe.tracing:QueryTracer._on_event",
        "e6observe.sinks.otel:_log_record",
        "e6observe.sinks.otel:OtelSink._drain",
        "e6observe.sinks.scrape:_histogram_rows",
        "e6observe.watcher:Watcher.run_once",
    ],
    [
        "e6observe.recorder:Histogram.observe",
        "e6observe.recorder:Recorder.announced",
        "e6observe.sinks.otel:OtelSink._on_event",
        "e6observe.endpoint.status:build_status",
        "e6observe.watcher:Watcher.readings",
    ],
    [
        "e6observe.recorder:Recorder.mismatch",
        "e6observe.recorder:Recorder.query_finished",
        "e6observe.recorder:Recorder.applied",
        "e6observe.endpoint.status:_Notifier.__call__",
        "e6observe.sinks.otel:OtelSink._observe_counter",
        "e6observe.sinks.scrape:counter_family",
    ],
    ["e6observe.events:EventRing.append", "e6observe.recorder:Recorder.state"],
    [
        "e6observe.hooks.channel:wrap_stub",
        "e6observe.recorder:Recorder.retry",
        "e6observe.recorder:Recorder.cache_cleared",
    ],
    [
        "e6observe.hooks.stubs:norm_code",
        "e6observe.hooks.cursor:_pinned_strategy",
        "e6observe.hooks.strategy_cache:_Interpreter._on_active",
    ],
    ["e6observe.hooks.cursor:retry_reason", "e6observe.hooks.strategy_cache:_Interpreter._on_pending"],
    ["e6observe.tracing:QueryTracer.start", "e6observe.hooks.strategy_cache:_pinned"],
    ["e6observe.tracing:QueryTracer.finish"],
]


def test_groups_cover_every_fault_with_disjoint_components() -> None:
    assert sorted(t for g in GROUPS for t in g) == sorted(FAULTS)
    for group in GROUPS:
        comps = [c for t in group for c in FAULTS[t]]
        assert len(comps) == len(set(comps)), group


def _patch(monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    module_name, path = target.split(":")
    owner: Any = importlib.import_module(module_name)
    *parents, attr = path.split(".")
    for p in parents:
        owner = getattr(owner, p)
    assert hasattr(owner, attr), f"{target} does not exist (renamed?)"

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise Injected(f"injected into {target}")

    monkeypatch.setattr(owner, attr, broken)


@pytest.fixture
def clean() -> Iterator[None]:
    _safe.reset_for_tests()
    yield
    _safe.reset_for_tests()


@pytest.mark.parametrize(
    "group", GROUPS, ids=["+".join(t.rsplit(":", 1)[1].rsplit(".", 1)[-1] for t in g) for g in GROUPS]
)
def test_faults_are_contained_counted_and_logged_once(
    group: list[str],
    baseline: list[tuple[Any, ...]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    clean: None,
) -> None:
    # Patched before instrument(): subscribers are bound methods captured at start.
    for target in group:
        _patch(monkeypatch, target)
    with caplog.at_level(logging.DEBUG, logger="e6observe"), Rig() as rig:
        # The status routes mount at their first request (endpoint/routes.py): mount them
        # first, so the /events notifier is subscribed while the scenario's events happen.
        http_get(rig.base + "/status")
        seen = _run_scenario()
        # Drive every output, so sink faults fire too.
        for _ in range(2):
            http_get(rig.base + "/metrics")
            http_get(rig.base + "/status")
            rig.otel_metrics()
        rig.rec.flush()
        rig.events(timeout=0.5)
        rig.rec.flush()
        assert _wait_for_watcher(rig)
        errors = _safe.internal_errors()
        scrape_code, scrape = http_get(rig.base + "/metrics")
    # The application saw exactly what it sees without e6observe.
    assert seen == baseline
    expected = {c for t in group for c in FAULTS[t]}
    assert set(errors) == expected, errors  # nothing else broke
    for target in group:
        first = FAULTS[target][0]
        assert errors[first] >= (1 if target in ONCE else 2), (target, errors)
    # Logged once per component (and kind), never once per call; the text never logged.
    logged = sorted(
        r.getMessage() for r in caplog.records if r.name == "e6observe" and r.levelno >= logging.WARNING
    )
    assert len(logged) == len(expected), logged
    for component in expected:
        hits = [m for m in logged if f"in {component};" in m]
        assert len(hits) == 1 and "Injected" in hits[0], logged
    assert not [m for m in logged if "injected into" in m]
    # ... and visible where an operator looks (unless /metrics itself is what broke).
    if scrape_code == 200:
        for component in expected:
            assert f'e6observe_internal_errors_total{{component="{component}"}}' in scrape


def _wait_for_watcher(rig: Rig) -> bool:
    """Wait (bounded) for a few watcher iterations, so a broken iteration is hit repeatedly."""
    from chaos import sink
    from helpers import wait_for

    watcher = sink("watcher")
    if watcher is None:
        return False
    start = _safe.internal_errors().get("watcher", 0)
    first = watcher.iterations
    return wait_for(
        lambda: watcher.iterations >= first + 3 or _safe.internal_errors().get("watcher", 0) >= start + 3,
        timeout=10,
    )


def test_a_broken_user_subscriber_is_counted_once_per_failure(
    baseline: list[tuple[Any, ...]], caplog: pytest.LogCaptureFixture, clean: None
) -> None:
    calls: list[str] = []

    def subscriber(ev: Any) -> None:
        calls.append(ev.kind)
        raise Injected("subscriber")

    with caplog.at_level(logging.DEBUG, logger="e6observe"), Rig() as rig:
        rig.rec.subscribe(subscriber)
        seen = _run_scenario()
        rig.rec.flush()
        errors = _safe.internal_errors()
        emitted = rig.rec.ring.emitted
    assert seen == baseline
    assert len(calls) == emitted > 5
    assert errors == {"event.subscriber": emitted}  # every failure counted, nothing else broke
    logged = [r for r in caplog.records if r.name == "e6observe" and r.levelno >= logging.WARNING]
    assert len(logged) == 1


def test_every_hook_and_sink_failing_at_once(
    baseline: list[tuple[Any, ...]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    clean: None,
) -> None:
    """All the faults above together: the application still sees exactly the baseline."""
    for target in FAULTS:
        _patch(monkeypatch, target)
    with caplog.at_level(logging.DEBUG, logger="e6observe"), Rig() as rig:
        seen = _run_scenario()
        for path in ("/metrics", "/status"):
            http_get(rig.base + path)
        rig.otel_metrics()
        rig.rec.flush()
        errors = _safe.internal_errors()
    assert seen == baseline
    assert {"hook.channel", "hook.cursor", "hook.strategy_cache"} <= set(errors)
    contained = [
        r.getMessage() for r in caplog.records if r.name == "e6observe" and r.levelno >= logging.WARNING
    ]
    assert len(contained) == len(set(contained)) <= len(errors)


@pytest.mark.matrix
def test_connector_errors_are_the_same_objects_with_broken_hooks(
    sim: Simulator, connect: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, clean: None
) -> None:
    """The very exception grpc raised reaches the application (not a copy, not a wrapper),
    even when every hook's recording fails on the way out."""
    import grpc

    import e6observe

    for target in (
        "e6observe.recorder:Recorder.rpc_histogram",
        "e6observe.recorder:Recorder.query_finished",
        "e6observe.recorder:Recorder.mismatch",
    ):
        _patch(monkeypatch, target)
    e6observe.instrument(otel=False)
    try:
        seen: list[BaseException] = []
        real = grpc._channel._InactiveRpcError.__init__

        def remember(self: Any, *a: Any, **k: Any) -> None:
            real(self, *a, **k)
            seen.append(self)

        # Observes (does not change) which error objects grpc creates.
        monkeypatch.setattr(grpc._channel._InactiveRpcError, "__init__", remember)
        sim.inject_fault("executeStatement", grpc.StatusCode.ABORTED, "x", 1)
        cur = connect().cursor()
        with pytest.raises(grpc.RpcError) as info:
            cur.execute("SELECT 1")
        assert seen and info.value is seen[-1]
        assert _safe.internal_errors().get("hook.channel", 0) >= 1
    finally:
        e6observe.uninstrument()
