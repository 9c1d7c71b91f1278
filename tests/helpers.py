"""Helpers shared by the tests: ``from helpers import ...`` (pytest puts tests/ on the path).

Plain functions and constants only; the fixtures and pytest hooks are in conftest.py. The soak
(``python -m tests.soak``) imports them outside pytest too.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from typing import Any, Callable, Iterator, NoReturn, Optional

#: The simulator's user (conftest's ``connect`` fixture logs in with these).
USER = "tester@example.com"
PASSWORD = "sim-password"


# -- the connector under test --------------------------------------------------------------------
def connector_version() -> tuple[int, ...]:
    from e6observe._version import connector_version_info

    return connector_version_info()


HAS_AIO = sys.version_info >= (3, 11) and connector_version() >= (3, 0, 0)


def login_errors_surface() -> bool:
    """True where a failed login reaches the caller: 2.3.9, 2.3.10 and 3.x. Releases 2.3.11 to
    2.3.15 swallow it in ``get_session_id`` (an empty session id follows)."""
    v = connector_version()
    return v >= (3, 0, 0) or v < (2, 3, 11)


def resumes_inside_the_login_loop() -> bool:
    """True where ``get_session_id`` resumes inside its strategy loop (2.3.11+): after the
    resume it goes on to the next colour, and a refused resume is tried again by the outer
    handler. 2.3.9 and 2.3.10 resume once, in the outer handler, and log in again from scratch."""
    return connector_version() >= (2, 3, 11)


def reset_connector_cache() -> None:
    from e6data_python_connector import e6data_grpc

    cache = e6data_grpc._local_strategy_cache
    with e6data_grpc._strategy_lock:
        cache["active_strategy"] = None
        cache["pending_strategy"] = None
        cache["query_strategy_map"] = {}
        cache["last_check_time"] = 0
        cache["last_transition_time"] = 0
        cache["session_invalidated"] = False
    # The cluster manager's own cache (strategy.py, written by auto-resume) - a plain dict
    # from 2.3.9 on; a Manager proxy before.
    try:
        from e6data_python_connector import strategy as cache_b
    except ImportError:  # pragma: no cover - connector without blue/green
        return
    b = getattr(cache_b, "_local_strategy_cache", None)
    if isinstance(b, dict):
        for key in ("active_strategy", "pending_strategy"):
            dict.__setitem__(b, key, None)


# -- waiting, ports, threads ---------------------------------------------------------------------
def wait_for(
    cond: Callable[[], Any], timeout: float = 10.0, interval: float = 0.005, *, what: Optional[str] = None
) -> bool:
    """Poll ``cond`` every ``interval`` seconds until it is true or ``timeout`` seconds passed
    (then it is asked once more). Returns whether it became true; with ``what``, a timeout
    raises ``AssertionError("timed out after N s waiting for WHAT")`` instead."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(interval)
    if cond():
        return True
    if what is not None:
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
    return False


@contextmanager
def held_by_a_thread(lock: Any) -> Iterator[None]:
    """Hold ``lock`` in another (daemon) thread for the block: to fork, or to contend, while a
    thread of this process holds it. Released and joined at the end of the block."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    try:
        assert held.wait(10), "the holder thread did not get the lock within 10 s"
        yield
    finally:
        release.set()
        holder.join(10)


def free_port() -> int:
    """A loopback port free at the time of asking (for a process that binds it itself)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def e6observe_threads() -> list[str]:
    """Names of e6observe's live threads, the simulator's left out."""
    return sorted(
        t.name
        for t in threading.enumerate()
        if t.name.startswith("e6observe-") and not t.name.startswith("e6observe-sim")
    )


# -- the running endpoint and sinks --------------------------------------------------------------
def sink_options(**kw: Any) -> Any:
    """The options a PrometheusSink reads, at their defaults, with ``kw`` on top."""
    from e6observe.config import Options

    base = dict(
        prometheus_port=None,
        prometheus_addr="127.0.0.1",
        registry=None,
        tls_certfile=None,
        tls_keyfile=None,
        tls_client_cafile=None,
        basic_auth=None,
        multiprocess_dir=None,
    )
    base.update(kw)
    return Options(**base)


def endpoint() -> str:
    """The URL of the running ``instrument(prometheus_port=...)`` endpoint."""
    from e6observe import _api

    active = _api._active
    assert active is not None
    for component, obj, _ in active.sinks:
        if component == "sink.prometheus":
            return str(obj.server.url)
    raise AssertionError("no metrics endpoint")


def scrape() -> str:
    """``/metrics`` of the running endpoint, as text."""
    with urllib.request.urlopen(endpoint() + "/metrics", timeout=10) as r:
        return str(r.read().decode())


def status_doc() -> Any:
    """``/status`` of the running endpoint, parsed."""
    with urllib.request.urlopen(endpoint() + "/status", timeout=10) as r:
        return json.loads(r.read().decode())


#: Values of the CI variable that mean "this is CI" (GitHub, GitLab and most others set "true").
_CI_TRUE = ("1", "true", "yes")


# -- tools a test needs --------------------------------------------------------------------------
def in_ci() -> bool:
    """True when the environment says this is CI (``CI=true``; ``.ci/run`` sets it)."""
    return os.environ.get("CI", "").strip().lower() in _CI_TRUE


def unavailable(what: str) -> NoReturn:
    """A tool a test needs is missing: in CI the test fails (CI must run everything), elsewhere
    it is skipped with the reason. ``what`` says what is missing and how to get it."""
    import pytest

    if in_ci():
        pytest.fail(f"{what} (CI=true: a missing tool fails the run)", pytrace=False)
    pytest.skip(f"{what} (skipped outside CI; CI=true fails instead)")


def need_binary(*names: str, install: str) -> str:
    """The path of the first of ``names`` found on PATH; else :func:`unavailable`, naming the
    first and ``install`` (how to get it)."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    unavailable(f"{names[0]} not found: {install}")


def openssl(*args: str, cwd: Any) -> None:
    """Run the openssl CLI (test certificates); a failure keeps openssl's own stderr in the
    message. Started through tests/subproc.py: openssl run from this process (which runs gRPC)
    by a plain fork() on Python 3.9 could die with SIGABRT before it started (grpcio's fork
    handlers; see tests/subproc.py)."""
    import subproc

    need_binary("openssl", install="apt-get install openssl (the TLS tests make their certificates with it)")
    proc = subproc.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise AssertionError(
            f"openssl {' '.join(args[:2])} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}"
        )


def make_pki(d: Any, *, other_ca: bool = False) -> dict[str, str]:
    """Certificates for the TLS tests, made in ``d`` with openssl (EC P-256, two days): a CA, a
    server certificate for 127.0.0.1 and a client certificate it signed; with ``other_ca``, a
    second CA that signed nothing presented. Keys: ca, server_cert, server_key, client_cert,
    client_key (and other_ca), each a file path."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def new_ca(name: str) -> None:
        openssl(
            "req",
            "-x509",
            *ec,
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-subj",
            f"/CN=e6observe-test-{name}",
            cwd=d,
        )

    new_ca("ca")
    with open(os.path.join(d, "san.ext"), "w", encoding="ascii") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    for name, cn in (("server", "127.0.0.1"), ("client", "scraper")):
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
        ext = ["-extfile", "san.ext"] if name == "server" else []
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            *ext,
            cwd=d,
        )
    files = {
        "ca": "ca.pem",
        "server_cert": "server.pem",
        "server_key": "server.key",
        "client_cert": "client.pem",
        "client_key": "client.key",
    }
    if other_ca:
        new_ca("other-ca")
        files["other_ca"] = "other-ca.pem"
    return {k: os.path.join(d, v) for k, v in files.items()}
