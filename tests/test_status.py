"""The /status document, the status page's files and the /events stream, over real HTTP."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Iterator, Optional

import pytest
from google.protobuf import json_format
from prometheus_client import CollectorRegistry

from e6observe.endpoint import status
from e6observe.endpoint.server import MetricsServer
from e6observe.events import Event, EventRing
from e6observe.recorder import Recorder
from e6observe.runtime import ProcessReader
from e6observe.v1 import events_pb2 as pb
from e6observe.watcher import Watcher

# Python 3.9 and connector 2.3.15 too (the legacy run of ./run test).
pytestmark = pytest.mark.matrix


@pytest.fixture
def served(rec: Recorder) -> Iterator[tuple[MetricsServer, status.Mounted]]:
    srv = MetricsServer(CollectorRegistry(), port=0).start()
    mounted = status.mount(srv, rec, process_reader=ProcessReader())
    try:
        yield srv, mounted
    finally:
        mounted.unmount()
        srv.close()


def get(url: str, headers: Optional[dict[str, str]] = None, method: str = "GET") -> Any:
    return urllib.request.urlopen(
        urllib.request.Request(url, headers=headers or {}, method=method), timeout=10
    )


def get_json(url: str) -> Any:
    with get(url) as r:
        assert r.headers["Content-Type"] == "application/json"
        return json.loads(r.read())


def a_switch(rec: Recorder) -> None:
    rec.detected("blue")
    rec.announced("green")
    rec.applied("blue", "green", "announced", pinned_queries=2)
    rec.mismatch("blue", "prepareStatement")


# -- /status -------------------------------------------------------------------------------------
def test_fresh_snapshot_follows_the_schema(rec: Recorder) -> None:
    doc = status.build_status(rec)
    snap = json_format.ParseDict(doc, pb.StatusSnapshot())  # every field name is the proto's
    assert snap.active == "none" and snap.pending == "" and snap.switch_count == 0
    assert doc["source"]["pid"] > 0 and doc["source"]["connector_version"]
    assert doc["recent_events"] == []


def test_status_shows_a_switch(rec: Recorder, served: tuple[MetricsServer, Any]) -> None:
    srv, _ = served
    a_switch(rec)
    doc = get_json(srv.url + "/status")
    json_format.ParseDict(doc, pb.StatusSnapshot())
    assert doc["active"] == "green" and doc["pending"] == ""
    assert doc["switch_count"] == 1 and doc["mismatch_count"] == 1
    assert {"from_strategy": "blue", "to_strategy": "green", "cause": "announced", "count": 1} in doc[
        "switches"
    ]
    assert doc["last_switch_unix"] > 0
    kinds = [e["kind"] for e in doc["recent_events"]]
    assert kinds == [
        "EVENT_KIND_DETECTED",
        "EVENT_KIND_ANNOUNCED",
        "EVENT_KIND_APPLIED",
        "EVENT_KIND_MISMATCH",
    ]
    applied = doc["recent_events"][2]
    assert applied["pinned_queries"] == 2 and applied["drain_seconds"] >= 0
    assert doc["events"]["emitted"] == 4 and doc["events"]["evicted"] == 0
    assert doc["memory"]["rss_bytes"] > 0


def test_status_pending_and_in_flight(rec: Recorder, served: tuple[MetricsServer, Any]) -> None:
    srv, _ = served
    rec.detected("blue")
    rec.announced("green")
    rec.query_started("blue")
    doc = get_json(srv.url + "/status")
    assert doc["active"] == "blue" and doc["pending"] == "green"
    assert doc["pending_age_seconds"] >= 0
    assert doc["in_flight"]["blue"] == 1


def test_status_recent_events_bounded_by_query(rec: Recorder, served: tuple[MetricsServer, Any]) -> None:
    srv, _ = served
    a_switch(rec)
    doc = get_json(srv.url + "/status?events=2")
    assert [e["seq"] for e in doc["recent_events"]] == [3, 4]
    assert get_json(srv.url + "/status?events=0")["recent_events"] == []


def test_status_latency_per_strategy(rec: Recorder, served: tuple[MetricsServer, Any]) -> None:
    srv, _ = served
    for _ in range(10):
        rec.query_finished("green", "ok", 0.003)
    doc = get_json(srv.url + "/status")
    green = [x for x in doc["latency"] if x["kind"] == "query" and x["strategy"] == "green"]
    assert len(green) == 1 and green[0]["count"] == 10
    # 0.003 s falls in the (0.001, 0.005] bucket; the estimate stays inside it
    assert 0.001 <= green[0]["p50_seconds"] <= 0.005


def test_status_reports_the_watcher(rec: Recorder) -> None:
    w = Watcher(rec).start()
    try:
        deadline = time.monotonic() + 10
        while not w.last_run and time.monotonic() < deadline:
            time.sleep(0.02)
        doc = status.build_status(rec, watcher=w)
    finally:
        w.stop()
    assert doc["watcher"]["running"] is True
    assert doc["watcher"]["last_run_unix"] > 0
    assert doc["watcher"]["interval_seconds"] == w.interval


def test_status_only_get(served: tuple[MetricsServer, Any]) -> None:
    srv, _ = served
    with pytest.raises(urllib.error.HTTPError) as exc:
        get(srv.url + "/status", method="POST")
    assert exc.value.code == 405


def test_basic_auth_applies_to_status_routes(rec: Recorder) -> None:
    srv = MetricsServer(CollectorRegistry(), port=0, basic_auth="viewer:s3cret-pw").start()
    mounted = status.mount(srv, rec)
    try:
        for path in ("/", "/status", "/events"):
            with pytest.raises(urllib.error.HTTPError) as exc:
                get(srv.url + path)
            assert exc.value.code == 401
        import base64

        auth = {"Authorization": "Basic " + base64.b64encode(b"viewer:s3cret-pw").decode()}
        with get(srv.url + "/status", auth) as r:
            body = r.read().decode()
        assert "s3cret-pw" not in body and json.loads(body)["active"] == "none"
    finally:
        mounted.unmount()
        srv.close()


# -- the page ------------------------------------------------------------------------------------
def test_page_and_assets_are_served_from_the_package(served: tuple[MetricsServer, Any]) -> None:
    srv, _ = served
    with get(srv.url + "/") as r:
        html = r.read().decode()
        assert r.headers["Content-Type"].startswith("text/html")
        csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert 'src="static/status.js"' in html and 'href="static/status.css"' in html
    for path, ctype in (("/static/status.js", "text/javascript"), ("/static/status.css", "text/css")):
        with get(srv.url + path) as r:
            assert r.headers["Content-Type"].startswith(ctype)
            body = r.read().decode()
        # no CDN, no third-party origin: the page works air-gapped
        assert "http://" not in body and "https://" not in body
        assert "innerHTML" not in body  # server data is only ever set as text
    assert "http://" not in html and "https://" not in html


def test_unmount_removes_the_routes(rec: Recorder) -> None:
    srv = MetricsServer(CollectorRegistry(), port=0).start()
    try:
        mounted = status.mount(srv, rec)
        mounted.unmount()
        with pytest.raises(urllib.error.HTTPError) as exc:
            get(srv.url + "/status")
        assert exc.value.code == 404
    finally:
        srv.close()


# -- /events -------------------------------------------------------------------------------------
class SSEReader:
    """A minimal server-sent-events reader over a raw socket (what a browser does)."""

    def __init__(
        self, srv: MetricsServer, path: str = "/events", headers: Optional[dict[str, str]] = None
    ) -> None:
        self.sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{extra}\r\n".encode()
        )
        self.f = self.sock.makefile("rb")
        self.status_line = self.f.readline().decode()
        self.headers: dict[str, str] = {}
        while True:
            line = self.f.readline().decode().strip()
            if not line:
                break
            k, _, v = line.partition(":")
            self.headers[k.lower()] = v.strip()

    def next_event(self) -> tuple[str, dict[str, Any]]:
        ev_id, data = "", ""
        while True:
            line = self.f.readline()
            if not line:
                raise EOFError
            text = line.decode().rstrip("\n")
            if text.startswith("id: "):
                ev_id = text[4:]
            elif text.startswith("data: "):
                data = text[6:]
            elif text == "" and data:
                return ev_id, json.loads(data)

    def close(self) -> None:
        self.f.close()
        self.sock.close()


def test_stream_replays_the_ring_with_ids(rec: Recorder, served: tuple[MetricsServer, Any]) -> None:
    srv, _ = served
    a_switch(rec)
    r = SSEReader(srv, "/events?since=0")
    try:
        assert r.status_line.startswith("HTTP/1.0 200") or r.status_line.startswith("HTTP/1.1 200")
        assert r.headers["content-type"].startswith("text/event-stream")
        got = [r.next_event() for _ in range(4)]
    finally:
        r.close()
    assert [i for i, _ in got] == ["1", "2", "3", "4"]
    msgs = [json_format.ParseDict(d, pb.StrategyEvent()) for _, d in got]
    assert msgs[2].kind == pb.EVENT_KIND_APPLIED and msgs[2].to_strategy == "green"
    assert msgs[2].source.pid > 0  # events leaving the process carry their source


def test_stream_resumes_after_last_event_id(rec: Recorder, served: tuple[MetricsServer, Any]) -> None:
    srv, _ = served
    a_switch(rec)
    r = SSEReader(srv, headers={"Last-Event-ID": "2"})
    try:
        assert [r.next_event()[0] for _ in range(2)] == ["3", "4"]
    finally:
        r.close()


def test_stream_from_a_previous_process_replays(rec: Recorder, served: tuple[MetricsServer, Any]) -> None:
    # an id higher than anything emitted here: the endpoint restarted, seq began again
    srv, _ = served
    rec.detected("blue")
    r = SSEReader(srv, headers={"Last-Event-ID": "5000"})
    try:
        assert r.next_event()[0] == "1"
    finally:
        r.close()


def test_stream_without_id_starts_with_new_events(rec: Recorder, served: tuple[MetricsServer, Any]) -> None:
    srv, mounted = served
    a_switch(rec)
    r = SSEReader(srv)
    try:
        deadline = time.monotonic() + 10
        while mounted.stream.open_streams < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        rec.applied("green", "blue", "mismatch")
        ev_id, data = r.next_event()
    finally:
        r.close()
    assert ev_id == "5" and data["kind"] == "EVENT_KIND_APPLIED" and data["cause"] == "mismatch"


def test_stream_count_is_bounded(rec: Recorder) -> None:
    srv = MetricsServer(CollectorRegistry(), port=0).start()
    app = status.EventStreamApp(rec, max_streams=2)
    rec.subscribe(app.notifier)
    srv.add_route("/events", app)
    readers = []
    try:
        readers = [SSEReader(srv) for _ in range(2)]
        third = SSEReader(srv)
        assert " 503 " in third.status_line and third.headers["retry-after"] == "5"
        third.close()
        readers.pop().close()
        # a freed slot is usable again once the server noticed the client left
        deadline = time.monotonic() + 15
        ok = False
        while time.monotonic() < deadline and not ok:
            rec.detected("blue")  # a write makes the server notice the closed socket
            r = SSEReader(srv)
            ok = " 200 " in r.status_line
            r.close()
            time.sleep(0.05)
        assert ok
    finally:
        for r in readers:
            r.close()
        app.close()
        srv.close()


def test_streams_end_when_the_server_closes(rec: Recorder) -> None:
    srv = MetricsServer(CollectorRegistry(), port=0).start()
    mounted = status.mount(srv, rec)
    r = SSEReader(srv)
    try:
        deadline = time.monotonic() + 10
        while mounted.stream.open_streams < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        srv.close()
        with pytest.raises(EOFError):
            r.next_event()  # the stream ends (EOF), it does not hang until the socket timeout
        deadline = time.monotonic() + 10
        while mounted.stream.open_streams and time.monotonic() < deadline:
            time.sleep(0.01)
        assert mounted.stream.open_streams == 0
    finally:
        r.close()
        mounted.unmount()


def test_stream_delivers_concurrent_events_without_loss(
    rec: Recorder, served: tuple[MetricsServer, Any]
) -> None:
    srv, _ = served
    r = SSEReader(srv, "/events?since=0")
    n_threads, per = 4, 50

    def burst() -> None:
        for _ in range(per):
            rec.mismatch("blue", "prepareStatement")

    threads = [threading.Thread(target=burst) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        seqs = sorted(int(r.next_event()[0]) for _ in range(n_threads * per))
    finally:
        r.close()
    assert seqs == list(range(1, n_threads * per + 1))


# -- the stream cursor -----------------------------------------------------------------------------
def _ev(seq: int) -> Event:
    return Event(seq, "detected", to_strategy="blue")


def test_cursor_waits_for_an_event_appended_late() -> None:
    c = status._Cursor(0)
    # seq 3 was taken by another thread but not appended yet; emitted counts appended events
    assert [e.seq for e in c.take([_ev(1), _ev(2), _ev(4)], 100, emitted=3)] == [1, 2, 4]
    assert c.watermark == 2
    assert [e.seq for e in c.take([_ev(4), _ev(3)], 100, emitted=4)] == [3]
    assert c.watermark == 4 and not c.sent


def test_cursor_skips_evicted_events() -> None:
    ring = EventRing(3)
    for i in range(1, 7):
        ring.append(_ev(i))
    c = status._Cursor(1)
    got = c.take(ring.snapshot(c.watermark), 100, emitted=ring.emitted)
    assert [e.seq for e in got] == [4, 5, 6] and c.watermark == 6


def test_mount_twice_on_one_server_is_one_mount(rec: Recorder) -> None:
    srv = MetricsServer(CollectorRegistry(), port=0).start()
    try:
        first = status.mount(srv, rec)
        assert status.mount(srv, rec) is first
        first.unmount()
        second = status.mount(srv, rec)  # after an unmount, a fresh one
        assert second is not first
        second.unmount()
    finally:
        srv.close()


def test_routes_on_an_instrumented_application(sim: Any, connect: Any) -> None:
    """instrument(prometheus_port=...) serves the status routes beside /metrics by itself: an
    application's own switch on its status page."""
    from e6observe import _api

    _api.instrument(prometheus_port=0)
    try:
        mounted = _api._active.status
        assert mounted is not None
        assert status.mount_instrumentation(_api._active) is mounted  # mounting again: a no-op
        with get(mounted.server.url + "/") as page:
            assert page.status == 200 and "text/html" in page.headers["Content-Type"]
        conn = connect()

        def select_one() -> None:
            cur = conn.cursor()
            cur.execute("SELECT 1")
            cur.fetchall()
            cur.clear()

        select_one()
        sim.flip()
        select_one()
        doc = get_json(mounted.server.url + "/status")
        assert doc["active"] == "green" and doc["switch_count"] == 1
        assert doc["watcher"]["running"] is True and doc["memory"]["rss_bytes"] > 0
        assert any(x["kind"] == "query" and x["count"] >= 1 for x in doc["latency"])
        server = mounted.server
    finally:
        _api.uninstrument()
    assert mounted.paths == [] and not server.running  # unmounted, endpoint closed


def test_no_endpoint_no_routes() -> None:
    from e6observe import _api

    _api.instrument()  # no prometheus_port: nothing to mount on
    try:
        assert status.mount_instrumentation(_api._active) is None
    finally:
        _api.uninstrument()


def test_stream_slot_is_freed_by_close_even_if_never_iterated(rec: Recorder) -> None:
    app = status.EventStreamApp(rec, max_streams=1)
    environ = {"REQUEST_METHOD": "GET", "QUERY_STRING": ""}
    first = app(environ, lambda *a: None)
    busy = app(environ, lambda *a: None)
    assert isinstance(busy, list) and b"too many event streams" in busy[0]
    first.close()  # type: ignore[attr-defined]  # never iterated: the slot still comes back
    again = app(environ, lambda *a: None)
    assert not isinstance(again, list)
    again.close()  # type: ignore[attr-defined]
