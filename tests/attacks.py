"""Attacks on the e6observe endpoint, for the tests and ``benchmarks/endpoint_attack.py``.

Loopback only, every loop bounded in count and in time, every socket closed at the end:

* :func:`header_flood` — connections each sending a request head of many long header lines
  (each under the standard library's per-line and 100-header limits);
* :class:`Slowloris` — connections each trickling one header line every ``interval`` seconds,
  reconnecting as soon as the server drops them (``eager``, the default; else at the next send);
* :func:`scrape_loop` — a legitimate scraper, once every ``period`` seconds, counting successes;
* :func:`rss_mib` — a process's resident memory, from ``/proc``.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from typing import Any, Callable, Optional

LOOPBACK = "127.0.0.1"


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _connect(port: int, ctx: Optional[ssl.SSLContext], timeout: float) -> socket.socket:
    s = socket.create_connection((LOOPBACK, port), timeout=timeout)
    if ctx is not None:
        try:
            return ctx.wrap_socket(s, server_hostname=LOOPBACK)
        except Exception:
            s.close()
            raise
    return s


def header_flood(
    port: int,
    connections: int = 64,
    lines: int = 98,
    line_bytes: int = 65_000,
    ctx: Optional[ssl.SSLContext] = None,
    deadline: float = 60.0,
    path: str = "/metrics",
) -> dict[str, int]:
    """``connections`` concurrent requests, each with ``lines`` header lines of ``line_bytes``.

    Returns how the requests ended: ``{"431": n, "408": n, "other_status": n, "dropped": n}``
    (dropped: the server closed the connection or stopped reading before answering)."""
    out = {"431": 0, "408": 0, "other_status": 0, "dropped": 0}
    lock = threading.Lock()
    end = time.monotonic() + deadline
    value = b"a" * line_bytes

    def one(i: int) -> None:
        verdict = "dropped"
        try:
            s = _connect(port, ctx, timeout=max(1.0, end - time.monotonic()))
        except OSError:
            with lock:
                out[verdict] += 1
            return
        try:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode())
            for n in range(lines):
                if time.monotonic() > end:
                    break
                s.sendall(b"X-Flood-%d: %s\r\n" % (n, value))
            s.sendall(b"\r\n")
        except OSError:
            pass  # the server stopped reading: see whether it said why
        try:
            s.settimeout(max(0.5, min(5.0, end - time.monotonic())))
            head = s.recv(64)
            if head.startswith(b"HTTP/1.") and len(head) >= 12:
                code = head[9:12].decode("ascii", "replace")
                verdict = code if code in ("431", "408") else "other_status"
        except OSError:
            pass
        finally:
            s.close()
        with lock:
            out[verdict] += 1

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, end - time.monotonic()) + 6.0)
    return out


class Slowloris:
    """``connections`` connections that each send one header line every ``interval`` seconds.

    ``start()`` opens them; ``stop()`` ends every thread and closes every socket (also called
    by the context manager). A connection the server drops is reopened at once, so the attack
    keeps its size for as long as it runs; ``reconnects`` counts them. Stops by itself after
    ``max_seconds`` in any case.
    """

    def __init__(
        self,
        port: int,
        connections: int = 64,
        interval: float = 10.0,
        ctx: Optional[ssl.SSLContext] = None,
        max_seconds: float = 120.0,
        path: str = "/metrics",
        eager: bool = True,
    ) -> None:
        self.port, self.connections, self.interval = port, connections, interval
        self.ctx, self.path, self.eager = ctx, path, eager
        self.stopping = threading.Event()
        self.end = time.monotonic() + max_seconds
        self.reconnects = 0
        self.lines_sent = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def _run(self, i: int) -> None:
        first = True
        while not self.stopping.is_set() and time.monotonic() < self.end:
            try:
                s = _connect(self.port, self.ctx, timeout=5.0)
            except OSError:
                self.stopping.wait(0.05)
                continue
            if not first:
                with self._lock:
                    self.reconnects += 1
            first = False
            try:
                s.sendall(f"GET {self.path} HTTP/1.1\r\nHost: x\r\n".encode())
                n = 0
                while not self._pause(s) and time.monotonic() < self.end:
                    s.sendall(b"X-Slow-%d: %d\r\n" % (n, i))
                    n += 1
                    with self._lock:
                        self.lines_sent += 1
            except OSError:
                pass  # dropped by the server: reconnect
            finally:
                s.close()

    def _pause(self, s: socket.socket) -> bool:
        """Wait one interval; True to stop. ``eager``: watch the socket meanwhile, and end the
        connection (to reopen it) as soon as the server closes or answers it."""
        if not self.eager:
            return self.stopping.wait(self.interval)
        end = time.monotonic() + self.interval
        while time.monotonic() < end:
            if self.stopping.is_set():
                return True
            s.settimeout(min(0.5, max(0.01, end - time.monotonic())))
            try:
                if s.recv(256) is not None:  # answered (408) or closed: reopen
                    raise ConnectionResetError
            except (socket.timeout, ssl.SSLWantReadError):
                continue
        return self.stopping.is_set()

    def start(self) -> Slowloris:
        for i in range(self.connections):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self.stopping.set()
        for t in self._threads:
            t.join(10.0)

    def __enter__(self) -> Slowloris:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def http_get(
    port: int,
    path: str = "/metrics",
    ctx: Optional[ssl.SSLContext] = None,
    auth: Optional[str] = None,
    timeout: float = 5.0,
    method: str = "GET",
) -> tuple[int, bytes]:
    """One HTTP/1.0 request on a fresh connection: ``(status, body)``; ``(0, b"")`` on a
    connection error or timeout. ``timeout`` bounds the whole exchange."""
    import base64

    end = time.monotonic() + timeout
    head = f"{method} {path} HTTP/1.0\r\nHost: {LOOPBACK}\r\n"
    if auth:
        head += f"Authorization: Basic {base64.b64encode(auth.encode()).decode()}\r\n"
    try:
        s = _connect(port, ctx, timeout)
    except (OSError, ssl.SSLError):
        return 0, b""
    try:
        s.sendall((head + "\r\n").encode())
        buf = bytearray()
        while time.monotonic() < end:
            s.settimeout(max(0.01, end - time.monotonic()))
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        else:
            return 0, b""
    except (OSError, ssl.SSLError):
        return 0, b""
    finally:
        s.close()
    head_end = buf.find(b"\r\n\r\n")
    if not buf.startswith(b"HTTP/1.") or head_end < 0:
        return 0, b""
    return int(buf[9:12]), bytes(buf[head_end + 4 :])


def scrape_loop(scrape: Callable[[], bool], count: int, period: float = 1.0) -> list[bool]:
    """Call ``scrape`` ``count`` times, one every ``period`` seconds; each result."""
    results: list[bool] = []
    t0 = time.monotonic()
    for i in range(count):
        results.append(bool(scrape()))
        delay = t0 + (i + 1) * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return results


def client_context(
    cafile: str, certfile: Optional[str] = None, keyfile: Optional[str] = None
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cafile)
    if certfile is not None:
        ctx.load_cert_chain(certfile, keyfile)
    return ctx


def sampled(fn: Callable[[], Any], stop: threading.Event, every: float, max_seconds: float) -> list[Any]:
    """Call ``fn`` every ``every`` seconds until ``stop`` (or ``max_seconds``); the values
    (collected in a list that the caller reads after stopping)."""
    values: list[Any] = []

    def run() -> None:
        end = time.monotonic() + max_seconds
        while not stop.is_set() and time.monotonic() < end:
            try:
                values.append(fn())
            except Exception:
                pass
            stop.wait(every)

    threading.Thread(target=run, daemon=True).start()
    return values
