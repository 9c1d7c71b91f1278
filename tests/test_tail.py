"""``e6observe status`` and ``e6observe tail`` against a real endpoint (and against none)."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from helpers import free_port, need_binary, openssl, wait_for
from prometheus_client import CollectorRegistry

from e6observe import cli
from e6observe.cli import remote
from e6observe.endpoint import status
from e6observe.endpoint.server import MetricsServer
from e6observe.recorder import Recorder

# Python 3.9 and connector 2.3.15 too (the legacy run of ./run test).
pytestmark = pytest.mark.matrix


@pytest.fixture
def endpoint(rec: Recorder) -> Iterator[MetricsServer]:
    srv = MetricsServer(CollectorRegistry(), port=0).start()
    mounted = status.mount(srv, rec)
    yield srv
    mounted.unmount()
    srv.close()


def run(argv: list[str]) -> tuple[int, str, str]:
    args = cli.build_parser().parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    runner = remote.run_status if argv[0] == "status" else remote.run_tail
    code = runner(args, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


class TailThread:
    """``e6observe tail`` running in a thread, its output collected."""

    def __init__(self, argv: list[str]) -> None:
        self.result: list[Any] = []
        self.thread = threading.Thread(target=lambda: self.result.append(run(argv)), daemon=True)
        self.thread.start()

    def join(self, timeout: float = 20.0) -> tuple[int, str, str]:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "tail did not finish"
        return self.result[0]  # type: ignore[no-any-return]


def open_streams(srv: MetricsServer) -> int:
    app = srv._routes.get("/events")
    return getattr(app, "open_streams", 0)


# -- status ------------------------------------------------------------------------------------------
def test_status_prints_the_state(rec: Recorder, endpoint: MetricsServer) -> None:
    rec.detected("blue")
    rec.announced("green")
    rec.applied("blue", "green", "announced")
    rec.mismatch("blue", "executeStatement")
    code, out, err = run(["status", "--url", endpoint.url])
    assert code == 0, err
    rows = {ln.split()[0]: ln for ln in out.splitlines()[1:]}
    assert rows["active"].split()[1] == "green"
    assert rows["pending"].split()[1] == "-"
    assert "1  (blue→green announced: 1)" in rows["switches"]
    assert rows["mismatches"].split()[1] == "1"


def test_status_json(rec: Recorder, endpoint: MetricsServer) -> None:
    rec.detected("green")
    code, out, _ = run(["status", "--url", endpoint.url + "/", "--json"])
    assert code == 0
    assert json.loads(out)["active"] == "green"


def test_status_unreachable_is_one_line_exit_1() -> None:
    code, out, err = run(["status", "--url", f"http://127.0.0.1:{free_port()}"])
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "cannot reach" in err and "connection refused" in err


def test_status_of_something_else_is_a_clear_error() -> None:
    srv = MetricsServer(CollectorRegistry(), port=0).start()  # /metrics only, no status routes
    try:
        code, _, err = run(["status", "--url", srv.url])
    finally:
        srv.close()
    assert code == 1 and "answered 404" in err and "without the status routes" in err


def test_status_with_basic_auth(rec: Recorder, monkeypatch: pytest.MonkeyPatch) -> None:
    srv = MetricsServer(CollectorRegistry(), port=0, basic_auth="ops:pa55-word").start()
    mounted = status.mount(srv, rec)
    try:
        monkeypatch.delenv("E6OBSERVE_BASIC_AUTH", raising=False)
        code, _, err = run(["status", "--url", srv.url])
        assert code == 1 and "401" in err and "E6OBSERVE_BASIC_AUTH" in err
        monkeypatch.setenv("E6OBSERVE_BASIC_AUTH", "ops:pa55-word")
        code, out, err = run(["status", "--url", srv.url])
        assert code == 0 and "pa55-word" not in out + err
    finally:
        mounted.unmount()
        srv.close()


def test_url_with_credentials_is_refused() -> None:
    code, _, err = run(["status", "--url", "http://ops:secret@127.0.0.1:1"])
    assert code == 2 and "secret" not in err


# -- tail ----------------------------------------------------------------------------------------------
def test_tail_prints_switches_as_they_happen(rec: Recorder, endpoint: MetricsServer) -> None:
    rec.detected("blue")  # before tail started: not replayed by default
    t = TailThread(["tail", "--url", endpoint.url, "--count", "2"])
    assert wait_for(lambda: open_streams(endpoint) == 1)
    rec.mismatch("blue", "prepareStatement")  # not a switch event: filtered out
    rec.announced("green")
    rec.applied("blue", "green", "announced", pinned_queries=1)
    code, out, err = t.join()
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    assert " announced " in lines[0] and "blue → green pending" in lines[0]
    assert " applied " in lines[1] and "blue → green  cause=announced" in lines[1]
    assert "pinned=1" in lines[1] and "seq=4" in lines[1]


def test_tail_all_kinds_as_json_from_the_start(rec: Recorder, endpoint: MetricsServer) -> None:
    rec.detected("blue")
    rec.mismatch("blue", "prepareStatement")
    code, out, _ = run(["tail", "--url", endpoint.url, "--all", "--since", "0", "--count", "2", "--json"])
    assert code == 0
    evs = [json.loads(ln) for ln in out.splitlines()]
    assert [e["kind"] for e in evs] == ["EVENT_KIND_DETECTED", "EVENT_KIND_MISMATCH"]


def test_tail_unreachable_is_one_line_exit_1() -> None:
    code, out, err = run(["tail", "--url", f"http://127.0.0.1:{free_port()}"])
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "cannot reach" in err and "Traceback" not in err


def test_tail_resumes_after_the_endpoint_restarts(rec: Recorder) -> None:
    """The stream drops; tail reconnects with Last-Event-ID and misses nothing in between."""
    srv = MetricsServer(CollectorRegistry(), port=0).start()
    port = srv.port
    mounted = status.mount(srv, rec)
    t = TailThread(["tail", "--url", srv.url, "--count", "2", "--reconnect-seconds", "20"])
    try:
        assert wait_for(lambda: mounted.stream.open_streams == 1)
        rec.applied("blue", "green", "mismatch")
        assert wait_for(lambda: rec.ring.emitted == 1)
        time.sleep(0.3)  # let the first event reach tail before the endpoint goes away
        mounted.unmount()
        srv.close()
        rec.applied("green", "blue", "announced")  # happens while nobody is listening
        srv = MetricsServer(CollectorRegistry(), port=port).start()
        mounted = status.mount(srv, rec)
        code, out, err = t.join()
    finally:
        mounted.unmount()
        srv.close()
    assert code == 0, err
    lines = out.splitlines()
    assert "blue → green  cause=mismatch" in lines[0] and "seq=1" in lines[0]
    assert "green → blue  cause=announced" in lines[1] and "seq=2" in lines[1]
    assert "reconnecting" in err


def test_format_event_neutralises_hostile_text() -> None:
    line = remote.format_event(
        {
            "kind": "EVENT_KIND_MISMATCH",
            "seq": 1,
            "pid": 1,
            "strategy": "blue\x1b[2J\nEVIL",
            "method": "x" * 500,
        }
    )
    assert "\x1b" not in line and "\n" not in line
    assert len(line) < 250


def test_tail_gives_up_when_the_endpoint_stays_gone(rec: Recorder) -> None:
    srv = MetricsServer(CollectorRegistry(), port=0).start()
    mounted = status.mount(srv, rec)
    t = TailThread(["tail", "--url", srv.url, "--reconnect-seconds", "0.5"])
    assert wait_for(lambda: mounted.stream.open_streams == 1)
    mounted.unmount()
    srv.close()
    code, out, err = t.join()
    assert code == 1 and out == ""
    assert "stream ended; reconnecting" in err
    assert err.strip().splitlines()[-1].startswith("e6observe tail: error: cannot reach")
    assert "gave up after 0.5 s" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and its key (the certificate is its own CA)."""
    need_binary("openssl", install="apt-get install openssl (the TLS tests make their certificates with it)")
    d: Path = tmp_path_factory.mktemp("tls")
    openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "key.pem",
        "-out",
        "cert.pem",
        "-days",
        "2",
        "-subj",
        "/CN=127.0.0.1",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
        cwd=d,
    )
    return str(d / "cert.pem"), str(d / "key.pem")


def test_https_endpoint_needs_its_ca(rec: Recorder, tls_files: tuple[str, str]) -> None:
    cert, key = tls_files
    srv = MetricsServer(CollectorRegistry(), port=0, certfile=cert, keyfile=key).start()
    mounted = status.mount(srv, rec)
    try:
        assert srv.url.startswith("https://")
        rec.detected("blue")
        code, _, err = run(["status", "--url", srv.url])
        assert code == 1 and "TLS certificate not trusted" in err and "--cacert" in err
        code, out, err = run(["status", "--url", srv.url, "--cacert", cert])
        assert code == 0, err
        assert "active       blue" in out
        code, out, err = run(
            ["tail", "--url", srv.url, "--cacert", cert, "--since", "0", "--all", "--count", "1"]
        )
        assert code == 0, err
        assert " detected " in out
    finally:
        mounted.unmount()
        srv.close()
