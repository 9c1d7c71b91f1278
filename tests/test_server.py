"""The metrics endpoint: plain, TLS, client-certificate and basic-auth modes, routes, streaming,
the taken-port error, containment of failing routes, and bounds (loopback bind, handshake off the
accept loop)."""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests
from helpers import make_pki
from prometheus_client import CollectorRegistry, Counter

from e6observe import _safe
from e6observe.endpoint.server import MetricsServer, MetricsServerError

PASSWORD = "canary-Pa55w0rd-7f3e"


@pytest.fixture
def registry() -> CollectorRegistry:
    reg = CollectorRegistry()
    c = Counter("e6test_scrapes", "A test counter.", registry=reg)
    c.inc(3)
    return reg


@pytest.fixture
def serve(registry: CollectorRegistry) -> Iterator[Callable[..., MetricsServer]]:
    started: list[MetricsServer] = []

    def _serve(**kw: Any) -> MetricsServer:
        srv = MetricsServer(kw.pop("registry", registry), port=kw.pop("port", 0), **kw)
        srv.start()
        started.append(srv)
        return srv

    yield _serve
    for s in started:
        s.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_pki(tmp_path_factory.mktemp("certs"), other_ca=True)


def test_plain_scrape_serves_registry_on_loopback(serve: Callable[..., MetricsServer]) -> None:
    srv = serve()
    assert srv.url.startswith("http://127.0.0.1:")
    assert srv._httpd is not None and srv._httpd.socket.getsockname()[0] == "127.0.0.1"
    r = requests.get(srv.url + "/metrics", timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    assert "e6test_scrapes_total 3.0" in r.text
    assert requests.get(srv.url + "/nothing-here", timeout=5).status_code == 404


def test_openmetrics_when_negotiated(serve: Callable[..., MetricsServer]) -> None:
    srv = serve()
    r = requests.get(
        srv.url + "/metrics", timeout=5, headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert r.headers["Content-Type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")
    assert "e6test_scrapes_total 3.0" in r.text


def test_tls_scrape(serve: Callable[..., MetricsServer], certs: dict[str, str]) -> None:
    srv = serve(certfile=certs["server_cert"], keyfile=certs["server_key"])
    assert srv.url.startswith("https://127.0.0.1:")
    r = requests.get(srv.url + "/metrics", timeout=5, verify=certs["ca"])
    assert r.status_code == 200 and "e6test_scrapes_total 3.0" in r.text
    # Plain HTTP to the TLS port gets no metrics.
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(srv.url.replace("https", "http") + "/metrics", timeout=5)


def test_client_certificate_required(serve: Callable[..., MetricsServer], certs: dict[str, str]) -> None:
    srv = serve(certfile=certs["server_cert"], keyfile=certs["server_key"], client_cafile=certs["ca"])
    url = srv.url + "/metrics"
    with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
        requests.get(url, timeout=5, verify=certs["ca"])
    r = requests.get(url, timeout=5, verify=certs["ca"], cert=(certs["client_cert"], certs["client_key"]))
    assert r.status_code == 200 and "e6test_scrapes_total 3.0" in r.text


def test_client_certificate_from_another_ca_is_refused(
    serve: Callable[..., MetricsServer], certs: dict[str, str]
) -> None:
    srv = serve(certfile=certs["server_cert"], keyfile=certs["server_key"], client_cafile=certs["other_ca"])
    with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
        requests.get(
            srv.url + "/metrics",
            timeout=5,
            verify=certs["ca"],
            cert=(certs["client_cert"], certs["client_key"]),
        )


def test_basic_auth_right_wrong_missing(
    serve: Callable[..., MetricsServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    srv = serve(basic_auth=f"prom:{PASSWORD}")
    srv.add_route("/status", lambda env, sr: (sr("200 OK", [("Content-Type", "text/plain")]), [b"ok"])[1])
    url = srv.url + "/metrics"
    missing = requests.get(url, timeout=5)
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith('Basic realm="e6observe"')
    assert "e6test" not in missing.text
    assert requests.get(url, timeout=5, auth=("prom", "wrong")).status_code == 401
    assert requests.get(url, timeout=5, auth=("someone", PASSWORD)).status_code == 401
    assert requests.get(url, timeout=5, auth=("prom", PASSWORD + "x")).status_code == 401
    assert requests.get(url, timeout=5, headers={"Authorization": "Basic %%%"}).status_code == 401
    assert requests.get(url, timeout=5, headers={"Authorization": "Bearer abc"}).status_code == 401
    ok = requests.get(url, timeout=5, auth=("prom", PASSWORD))
    assert ok.status_code == 200 and "e6test_scrapes_total 3.0" in ok.text
    # Mounted routes are behind the same check.
    assert requests.get(srv.url + "/status", timeout=5).status_code == 401
    assert requests.get(srv.url + "/status", timeout=5, auth=("prom", PASSWORD)).text == "ok"
    assert PASSWORD not in caplog.text


def test_basic_auth_with_tls(serve: Callable[..., MetricsServer], certs: dict[str, str]) -> None:
    srv = serve(certfile=certs["server_cert"], keyfile=certs["server_key"], basic_auth=f"prom:{PASSWORD}")
    url = srv.url + "/metrics"
    assert requests.get(url, timeout=5, verify=certs["ca"]).status_code == 401
    assert requests.get(url, timeout=5, verify=certs["ca"], auth=("prom", PASSWORD)).ok


def test_bad_basic_auth_value_never_echoed() -> None:
    for bad in ("no-colon-" + PASSWORD, ":" + PASSWORD, "user:"):
        with pytest.raises(ValueError) as info:
            MetricsServer(CollectorRegistry(), basic_auth=bad)
        assert PASSWORD not in str(info.value)


def test_taken_port_is_a_clear_oserror(serve: Callable[..., MetricsServer]) -> None:
    first = serve()
    second = MetricsServer(CollectorRegistry(), port=first.port)
    with pytest.raises(MetricsServerError) as info:
        second.start()
    assert isinstance(info.value, OSError)
    assert info.value.errno == errno.EADDRINUSE
    assert f"127.0.0.1:{first.port}" in str(info.value)
    assert not second.running
    second.close()  # closing a server that never started is fine
    # The first one is unaffected.
    assert requests.get(first.url + "/metrics", timeout=5).status_code == 200


def test_bad_tls_files_are_a_clear_error(tmp_path: Path) -> None:
    srv = MetricsServer(
        CollectorRegistry(), certfile=str(tmp_path / "missing.pem"), keyfile=str(tmp_path / "missing.key")
    )
    with pytest.raises(MetricsServerError, match="missing.pem"):
        srv.start()
    with pytest.raises(ValueError):
        MetricsServer(CollectorRegistry(), certfile="a.pem")  # key missing
    with pytest.raises(ValueError):
        MetricsServer(CollectorRegistry(), client_cafile="ca.pem")  # no TLS to check it with


def test_close_frees_the_port_and_is_idempotent(
    serve: Callable[..., MetricsServer], registry: CollectorRegistry
) -> None:
    srv = serve()
    port = srv.port
    srv.close()
    srv.close()
    again = serve(port=port)  # the same port binds again at once
    assert requests.get(again.url + "/metrics", timeout=5).status_code == 200


def test_route_streams_chunks_as_yielded(serve: Callable[..., MetricsServer]) -> None:
    srv = serve()
    release = threading.Event()
    finished = threading.Event()

    def events(environ: dict, start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        stopping = environ["e6observe.stopping"]

        def gen() -> Iterator[bytes]:
            try:
                yield b"data: first\n\n"
                release.wait(10)  # the client must already have the first chunk by now
                yield b"data: second\n\n"
                stopping.wait(10)
            finally:
                finished.set()

        return gen()

    srv.add_route("/events", events)
    # A raw socket, so that what is asserted is what arrived, not what a client library buffered.
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
        sock.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        got = _read_until(sock, b"data: first\n\n")
        assert b"text/event-stream" in got
        assert not release.is_set()  # the generator is still blocked: this was streamed
        release.set()
        assert b"data: second\n\n" in _read_until(sock, b"data: second\n\n")
        srv.close()  # sets environ["e6observe.stopping"]: the stream ends
        assert finished.wait(5)


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    buf = b""
    while marker not in buf:
        chunk = sock.recv(4096)  # the 5 s socket timeout fails the test if nothing comes
        assert chunk, f"connection closed before {marker!r}; got {buf!r}"
        buf += chunk
    return buf


def test_failing_route_is_contained(serve: Callable[..., MetricsServer]) -> None:
    srv = serve()
    before = _safe.internal_errors().get("server", 0)

    def broken(environ: dict, start_response: Callable[..., Any]) -> list[bytes]:
        raise RuntimeError("route bug")

    def broken_midway(environ: dict, start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"partial"
        raise RuntimeError("stream bug")

    srv.add_route("/broken", broken)
    srv.add_route("/midway", broken_midway)
    assert requests.get(srv.url + "/broken", timeout=5).status_code == 500
    assert requests.get(srv.url + "/midway", timeout=5).text == "partial"
    assert _safe.internal_errors().get("server", 0) == before + 2
    assert requests.get(srv.url + "/metrics", timeout=5).status_code == 200
    srv.remove_route("/broken")
    assert requests.get(srv.url + "/broken", timeout=5).status_code == 404


def test_silent_tls_client_does_not_stall_other_scrapes(
    serve: Callable[..., MetricsServer], certs: dict[str, str]
) -> None:
    srv = serve(certfile=certs["server_cert"], keyfile=certs["server_key"])
    # Connect and send nothing: the handshake waits in this connection's own thread.
    idle = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    try:
        r = requests.get(srv.url + "/metrics", timeout=5, verify=certs["ca"])
        assert r.status_code == 200
    finally:
        idle.close()


def test_tls_context_refuses_old_protocols(certs: dict[str, str]) -> None:
    srv = MetricsServer(CollectorRegistry(), certfile=certs["server_cert"], keyfile=certs["server_key"])
    ctx = srv._ssl_context()
    assert ctx is not None and ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_NONE
