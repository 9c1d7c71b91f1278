"""What ``instrument()`` loads at start-up (issue 17, item 6: start-up RSS ≤ 3 MiB).

Every module e6observe loads costs RSS in every instrumented process (about 1.7 times its
compiled size), so the set is pinned here and a module that comes back fails the test. Loaded
on first use instead of by ``instrument()``:

* the OpenTelemetry API's signal modules, the SDK and e6observe's OpenTelemetry sink and query
  tracer, until the application itself imports the API (tests/test_otel_deferred.py);
* the status routes (``endpoint/status.py``, ``status_page.py``), protobuf's JSON support with
  the generated messages, ``importlib.resources``, until ``/``, ``/status``, ``/events`` or a
  static file is first requested (``endpoint/routes.py``; the page's latency history starts at
  once);
* the async hooks (``hooks/aio.py``), until the application imports the connector's async API.

Each test runs a fresh interpreter (the test process has everything loaded). No test here
asserts a time or an RSS figure: those are benchmarks/startup.py's.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import subproc

ROOT = Path(__file__).resolve().parent.parent

#: e6observe's modules after ``import e6observe; instrument(prometheus_port=0)``, in an
#: application that has imported the connector and nothing of OpenTelemetry.
STARTUP_MODULES = {
    "e6observe",
    "e6observe._api",
    "e6observe._colours",
    "e6observe._fork",
    "e6observe._forkhazards",
    "e6observe._otelattrs",
    "e6observe._otelctx",
    "e6observe._quantile",
    "e6observe._safe",
    "e6observe._version",
    "e6observe.config",
    "e6observe.connections",
    "e6observe.endpoint",
    "e6observe.endpoint.history",
    "e6observe.endpoint.routes",
    "e6observe.endpoint.server",
    "e6observe.events",
    "e6observe.hooks",
    "e6observe.hooks.channel",
    "e6observe.hooks.cluster",
    "e6observe.hooks.cursor",
    "e6observe.hooks.pool",
    "e6observe.hooks.strategy_cache",
    "e6observe.hooks.stubs",
    "e6observe.metrics",
    "e6observe.readers",
    "e6observe.readings",
    "e6observe.recorder",
    "e6observe.runtime",
    "e6observe.sinks",
    "e6observe.sinks.prometheus",
    "e6observe.sinks.scrape",
    "e6observe.watcher",
}
#: Loaded on first use (see the module docstring); never by instrument() in such a process.
LAZY = (
    "opentelemetry.context",
    "opentelemetry.metrics",
    "opentelemetry._logs",
    "opentelemetry.trace",
    "opentelemetry.sdk",
    "e6observe.sinks.otel",
    "e6observe.sinks._otel_sdk",
    "e6observe.tracing",
    "e6observe.endpoint.status",
    "e6observe.endpoint.status_page",
    "e6observe.hooks.aio",
    "google.protobuf.json_format",
    "e6observe.v1.convert",
    "e6observe.v1.events_pb2",
    "importlib.resources",
)
#: The only other package instrument() brings in itself: the Prometheus integration. The
#: OpenTelemetry API's context module (through which the hooks honour suppress_instrumentation())
#: is bound when the application imports it (test_suppression_bound_when_the_api_arrives); what it
#: loads depends on the API's version (_CONTEXT_ONLY).
THIRD_PARTY = ("prometheus_client",)

_CONTEXT_ONLY = r"""
import json, sys, sysconfig
import e6data_python_connector.e6data_grpc
before = set(sys.modules)
import opentelemetry.context
site = sysconfig.get_paths()["purelib"]
print(json.dumps(sorted(m for m in set(sys.modules) - before
                        if (getattr(sys.modules[m], "__file__", None) or "").startswith(site))))
"""

_START = r"""
import json, sys, sysconfig, urllib.request
import e6data_python_connector.e6data_grpc  # the application's own import
before = set(sys.modules)
import e6observe
e6observe.instrument(prometheus_port=0, **json.loads(sys.argv[1]))
new = sorted(set(sys.modules) - before)
site = sysconfig.get_paths()["purelib"]
third = sorted(m for m in new if (getattr(sys.modules[m], "__file__", None) or "").startswith(site)
               and not m.startswith("e6observe"))
from e6observe import _api
srv = next(o.server for c, o, _ in _api._active.sinks if c == "sink.prometheus")
served = {}
for path in ("/", "/status", "/static/status.js", "/events?since=0"):
    with urllib.request.urlopen(srv.url + path, timeout=10) as r:
        served[path] = [r.status, len(r.read(1) if path.startswith("/events") else r.read())]
status = json.loads(urllib.request.urlopen(srv.url + "/status", timeout=10).read())
loaded_after_use = sorted(m for m in ("e6observe.endpoint.status", "e6observe.endpoint.status_page")
                          if m in sys.modules)
aio_before = "e6observe.hooks.aio" in sys.modules
try:  # the application starts using the async API (connector 3.0+)
    import e6data_python_connector.async_connection
    has_async = True
except ImportError:
    has_async = False
aio = sys.modules.get("e6observe.hooks.aio")
aio_installed = aio is not None and aio.HOOK.installed()
e6observe.uninstrument()
print(json.dumps({"e6observe": [m for m in new if m.startswith("e6observe")], "third": third,
                  "lazy_loaded": [m for m in sys.argv[2].split(",") if m in new], "served": served,
                  "status_keys": sorted(status), "loaded_after_use": loaded_after_use,
                  "aio_before": aio_before, "aio_installed": aio_installed, "has_async": has_async,
                  "aio_after_uninstrument": aio is not None and aio.HOOK.installed()}))
"""


def _run(code: str, *args: str) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("E6OBSERVE_", "OTEL_"))}
    env["PYTHONPATH"] = str(ROOT)
    proc = subproc.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=str(ROOT),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("options", [{}, {"otel": False}], ids=["defaults", "otel=False"])
def test_instrument_loads_the_pinned_modules_and_the_rest_on_first_use(options: dict[str, Any]) -> None:
    out = _run(_START, json.dumps(options), ",".join(LAZY))
    extra = sorted(set(out["e6observe"]) - STARTUP_MODULES)
    gone = sorted(STARTUP_MODULES - set(out["e6observe"]))
    # A new module here costs every instrumented process RSS: load it on first use, or add it
    # (and its cost, benchmarks/startup.py) to BENCHMARKS.md's start-up table and here.
    assert extra == [] and gone == [], f"loaded now: {extra}; no longer loaded: {gone}"
    assert out["lazy_loaded"] == []
    context = set(_run(_CONTEXT_ONLY))
    assert [m for m in out["third"] if not m.startswith(THIRD_PARTY) and m not in context] == []
    # ... and everything is still there once used.
    for path, (status, size) in out["served"].items():
        assert status == 200 and size > 0, path
    assert "recent_events" in out["status_keys"]
    assert out["loaded_after_use"] == ["e6observe.endpoint.status", "e6observe.endpoint.status_page"]
    assert out["aio_before"] is False
    # (the async API needs the connector's 3.0 releases and Python 3.11)
    assert out["aio_installed"] is (out["has_async"] and sys.version_info >= (3, 11))
    assert out["aio_after_uninstrument"] is False


_LATE_OTEL = r"""
import json, sys
import e6data_python_connector.e6data_grpc as g
from e6observe.sim import Simulator
import e6observe
sim = Simulator(port=0)
sim.start()
rec = e6observe.instrument(otel=False)
loaded_at_instrument = "opentelemetry.context" in sys.modules
conn = g.Connection(host="127.0.0.1", port=sim.port, username="u@example.com", password="pw")
def query():
    cur = conn.cursor()
    cur.execute("SELECT 1")
    cur.fetchall()
    cur.clear()
from e6observe import metrics as M
def queries():
    return sum(h.count for _, h in rec.family(M.QUERY_DURATION).items())
query()
before = queries()
from opentelemetry.context import attach, detach, set_value, _SUPPRESS_INSTRUMENTATION_KEY
token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
query()  # suppressed: not counted
detach(token)
suppressed = queries() - before
query()
after = queries() - before
e6observe.uninstrument()
sim.stop()
print(json.dumps({"loaded_at_instrument": loaded_at_instrument, "suppressed": suppressed, "after": after}))
"""


def test_suppression_bound_when_the_api_arrives() -> None:
    """instrument() does not import the OpenTelemetry API's context module (~56 KiB) in an
    application that has not; suppress_instrumentation() still holds once the application
    imports it later."""
    out = _run(_LATE_OTEL)
    assert out == {"loaded_at_instrument": False, "suppressed": 0, "after": 1}


def test_an_ip_address_is_bound_without_the_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    """The endpoint on an IP address written out does not call getaddrinfo() (its first call
    loads the C library's name-service set-up); a host name still goes through it."""
    from prometheus_client import CollectorRegistry

    from e6observe.endpoint import server as server_mod

    assert server_mod._literal_family("127.0.0.1") == socket.AF_INET
    assert server_mod._literal_family("::1") == socket.AF_INET6
    assert server_mod._literal_family("fe80::1%lo") == socket.AF_INET6
    assert server_mod._literal_family("localhost") is None
    calls: list[Any] = []
    real = socket.getaddrinfo

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", counting)
    for addr in ("127.0.0.1", "localhost"):
        srv = server_mod.MetricsServer(CollectorRegistry(), addr=addr, port=0).start()
        try:
            assert srv.running
        finally:
            srv.close()
    assert calls == [b"localhost"]


def test_instrument_collects_nothing_before_the_first_scrape(monkeypatch: pytest.MonkeyPatch) -> None:
    """With e6observe's own registry, no collector runs at instrument() (a passed-in registry
    is collected once, to leave out families another collector there already exports)."""
    import e6observe
    from e6observe.readings import ReadingsCollector
    from e6observe.runtime import RuntimeCollector
    from e6observe.sinks.scrape import RecorderCollector

    collected: list[str] = []
    for cls in (RecorderCollector, ReadingsCollector, RuntimeCollector):
        real = cls.collect

        def counting(self: Any, _real: Any = real, _name: str = cls.__name__) -> Any:
            collected.append(_name)
            return _real(self)

        monkeypatch.setattr(cls, "collect", counting)
    e6observe.uninstrument()
    assert e6observe.instrument(otel=False) is not None
    try:
        assert collected == []
    finally:
        e6observe.uninstrument()


def test_the_async_hooks_wait_for_the_module_they_patch() -> None:
    from e6observe import _api
    from e6observe.hooks import aio

    assert _api.ASYNC_API == aio.ASYNC_MODULE
