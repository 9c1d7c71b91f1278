"""The HTTP endpoint: /metrics plus whatever routes other parts of e6observe mount on it.

No HTTP server is written here. Requests are parsed and answered by the standard library's
``wsgiref`` (one thread per connection through ``socketserver.ThreadingMixIn``), /metrics is
prometheus_client's own WSGI app (text format, OpenMetrics when the scraper asks, gzip, the
``name[]`` filter), and the pieces this module adds are small WSGI middleware and server
hooks:

* **routing** — ``add_route(path, app)`` mounts a WSGI app on an exact path (the status page,
  ``/status`` JSON, the ``/events`` stream);
* **basic auth** — every route, constant-time comparison, the password never logged;
* **TLS** — the handshake runs in the connection's own thread with a timeout, so a client that
  connects and sends nothing cannot stall the accept loop; ``client_cafile`` makes a client
  certificate signed by that CA mandatory;
* **bounds** — the request head (request line and headers) is read by this module, not by the
  standard library: at most :data:`MAX_HEAD_BYTES` bytes (more: ``431``, connection closed) within
  :data:`HEAD_TIMEOUT` seconds of the accept, TLS handshake included (late: ``408``), before auth
  and before anything else looks at it. At most :data:`MAX_CONNECTIONS` connections are served at
  once; when all are taken, a new connection evicts the oldest one still sending its head, so
  slow clients cannot starve a scrape (docs/ARCHITECTURE.md, "The endpoint under attack"). A
  response write that blocks for :data:`WRITE_TIMEOUT` seconds (a client that does not read)
  ends the connection. Nothing is ever written to stderr;
* **methods** — ``GET`` and ``HEAD`` on every route, anything else ``405``; ``HEAD`` is
  answered by the route's ``GET`` headers without a body (a stream is never started);
* **containment** — a failing route app answers 500 and is counted in
  ``e6observe_internal_errors_total{component="server"}``, never raised.

Streaming: a route app may return a generator; each yielded chunk is written and flushed as
soon as it is yielded (the response is HTTP/1.0 without a length, delimited by closing the
connection), which is what a server-sent-events endpoint needs. Long-lived apps should stop when
``environ["e6observe.stopping"]`` (a ``threading.Event``) is set: :meth:`MetricsServer.close`
sets it.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hmac
import io
import ipaddress
import itertools
import logging
import selectors
import socket
import ssl
import threading
import time
from socketserver import TCPServer, _SocketWriter  # type: ignore[attr-defined]
from typing import Any, Callable, Iterable, Iterator, Optional
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

from .._safe import record_internal_error

logger = logging.getLogger("e6observe")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

#: Connections served at the same time. When all are taken, a new connection evicts the oldest
#: one still sending its request head; when none is (all are being answered), it is closed.
MAX_CONNECTIONS = 64
#: Bytes the whole request head (request line + headers) may take; more: 431 and close.
MAX_HEAD_BYTES = 64 * 1024
#: Seconds from accept to the end of the request head, TLS handshake included; later: 408.
HEAD_TIMEOUT = 5.0
#: Seconds one write of a response may block (a client that does not read is dropped).
WRITE_TIMEOUT = 10.0
#: Pending connections the kernel queues before accept (the standard library's default is 5).
LISTEN_BACKLOG = 128
#: Bytes of a rejected request read and discarded after the 431, so that the client sees the
#: answer rather than a reset; at most this much, for at most DRAIN_SECONDS.
DRAIN_BYTES = 256 * 1024
DRAIN_SECONDS = 0.5
REALM = "e6observe"


def _literal_family(addr: str) -> Optional[socket.AddressFamily]:
    """The address family of an IP address written out in full (``127.0.0.1``, ``::1``,
    ``fe80::1%eth0``), else None (a host name: the resolver decides). No resolver call for a
    literal: the C library's first ``getaddrinfo()`` loads its name-service set-up, about
    0.06 MiB of RSS at ``instrument()``."""
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0] if ":" in addr else addr)
    except ValueError:
        return None
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


class MetricsServerError(OSError):
    """The endpoint could not be started (port taken, address not local, bad TLS files).

    An ``OSError`` (``errno`` kept when there is one) whose message names the address, so the
    one log line ``instrument()`` writes says what to change.
    """


class MetricsServerTLSError(MetricsServerError):
    """The endpoint's certificate, key or client CA could not be loaded (the port is fine)."""


class _NullStream:
    """A write-only sink: wsgiref prints tracebacks to the handler's stderr; ours go nowhere."""

    def write(self, _data: str) -> int:
        return 0

    def flush(self) -> None:
        return None


_NULL = _NullStream()


def _answer(sock: Any, status: str, text: str) -> None:
    """A best-effort plain-text answer before the request was parsed (431, 408)."""
    body = text.encode()
    head = (
        f"HTTP/1.0 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    try:
        sock.settimeout(1.0)
        sock.sendall(head + body)
    except (OSError, ValueError):
        pass


def _abort(sock: Any) -> None:
    """Wake a thread blocked on ``sock`` (it sees end-of-file) and refuse further traffic.

    ``socket.socket.shutdown`` is called even for a TLS socket: ``SSLSocket.shutdown`` would
    also drop its TLS state under the feet of the thread reading it."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except (OSError, ValueError, TypeError):
        pass


class _Conn:
    """One accepted connection as the server tracks it (for eviction and the head deadline)."""

    __slots__ = ("key", "sock", "started", "in_head", "evicted")

    def __init__(self, key: int, sock: Any) -> None:
        self.key = key
        self.sock = sock
        self.started = time.monotonic()
        self.in_head = True  # handshake or request head not finished yet: evictable
        self.evicted = False


def _head_end(buf: bytearray, start: int) -> int:
    """Index just past the empty line ending a request head in ``buf``, or -1."""
    ends = [i for i in (buf.find(b"\n\r\n", start), buf.find(b"\n\n", start)) if i >= 0]
    if not ends:
        return -1
    i = min(ends)
    return i + (3 if buf[i + 1 : i + 2] == b"\r" else 2)


class _Handler(WSGIRequestHandler):
    """wsgiref's request handler, silent, reading the request head itself within bounds."""

    timeout = None  # set per phase: the head deadline, then WRITE_TIMEOUT

    def __init__(self, request: Any, client_address: Any, server: Any, conn: Optional[_Conn] = None) -> None:
        self.conn = conn
        super().__init__(request, client_address, server)

    def setup(self) -> None:
        # Like StreamRequestHandler.setup, without makefile() for reading: the head is read
        # with recv() below and served from memory.
        self.connection = self.request
        self.rfile = io.BytesIO()
        self.wfile = _SocketWriter(self.connection)  # sendall, as the standard library's

    def _read_head(self) -> Optional[bytes]:
        """The request head (and any bytes that came with it), or None when the connection
        was answered (431, 408) or dropped. Never holds more than the head budget."""
        srv = self.server
        conn = self.conn
        sock = self.connection
        budget: int = getattr(srv, "max_head_bytes", MAX_HEAD_BYTES)
        started = conn.started if conn is not None else time.monotonic()
        deadline = started + getattr(srv, "head_timeout", HEAD_TIMEOUT)
        buf = bytearray()
        while True:
            if conn is not None and conn.evicted:
                return None
            if len(buf) >= budget:
                _answer(sock, "431 Request Header Fields Too Large", f"request head over {budget} bytes\n")
                self._drain(sock)
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                _answer(sock, "408 Request Timeout", "request head not received in time\n")
                return None
            sock.settimeout(left)
            try:
                chunk = sock.recv(min(16384, budget - len(buf)))
            except socket.timeout:
                continue  # the deadline check above answers
            except (OSError, ValueError):
                return None
            if not chunk:
                return None
            scan = max(0, len(buf) - 2)
            buf += chunk
            end = _head_end(buf, scan)
            if end >= 0:
                return bytes(buf)

    def _drain(self, sock: Any) -> None:
        # Half-close, then read and discard for a moment: closing with unread data would
        # reset the connection, and the client might never see the 431.
        try:
            sock.shutdown(socket.SHUT_WR)
        except (OSError, ValueError):
            return
        end = time.monotonic() + DRAIN_SECONDS
        got = 0
        while got < DRAIN_BYTES and not (self.conn is not None and self.conn.evicted):
            left = end - time.monotonic()
            if left <= 0:
                return
            try:
                sock.settimeout(left)
                chunk = sock.recv(65536)
            except (OSError, ValueError):
                return
            if not chunk:
                return
            got += len(chunk)

    def handle(self) -> None:
        head = self._read_head()
        if head is None:
            return
        srv = self.server
        if self.conn is not None and not srv._head_done(self.conn):  # type: ignore[attr-defined]
            return  # evicted just as its head completed
        self.connection.settimeout(getattr(srv, "write_timeout", WRITE_TIMEOUT))
        self.rfile = io.BytesIO(head)
        # What WSGIRequestHandler.handle does, on the head read above.
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
            return
        if not self.parse_request():  # an error was sent (400, 431 for >100 headers, ...)
            return
        handler = ServerHandler(
            self.rfile,
            self.wfile,  # type: ignore[arg-type]
            self.get_stderr(),
            self.get_environ(),
            multithread=False,
        )
        handler.request_handler = self  # type: ignore[attr-defined]
        handler.run(srv.get_app())  # type: ignore[attr-defined]

    def get_environ(self) -> dict[str, Any]:
        env = super().get_environ()
        # For streaming routes: the connection, to size its send buffer (see status.py).
        env["e6observe.socket"] = self.connection
        return env

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        # Request lines are not logged at all: paths and query strings are the client's text.
        return None

    def get_stderr(self) -> Any:
        return _NULL


class _Server(WSGIServer):
    """A thread per connection, bounded, evicting slow heads, woken at once to stop."""

    request_queue_size = LISTEN_BACKLOG
    ssl_context: Optional[ssl.SSLContext] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.max_connections = MAX_CONNECTIONS
        self.max_head_bytes = MAX_HEAD_BYTES
        self.head_timeout = HEAD_TIMEOUT
        self.write_timeout = WRITE_TIMEOUT
        self._conns: dict[int, _Conn] = {}
        self._conns_lock = threading.Lock()
        self._keys = itertools.count()
        #: Connections evicted while sending their head, and refused with every slot answering.
        self.evicted = 0
        self.refused = 0
        self._stop = False
        self._wake_r, self._wake_w = socket.socketpair()
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            # A taken port: in multi-process mode every worker but one retries each interval.
            self._wake_r.close()
            self._wake_w.close()
            raise

    def server_bind(self) -> None:
        # HTTPServer.server_bind + WSGIServer.server_bind, less ``socket.getfqdn(host)``: a
        # reverse DNS lookup at every start (slow where DNS is), and it loads the idna codec
        # (with unicodedata, ~0.4 MiB of RSS). SERVER_NAME is the bound address instead.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = port
        self.setup_environ()

    # -- the accept loop ----------------------------------------------------------------------
    def serve(self) -> None:
        """Accept until :meth:`stop`; wakes at once on stop (no poll interval)."""
        with selectors.DefaultSelector() as sel:
            sel.register(self.socket, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stop:
                for key, _ in sel.select():
                    if self._stop:
                        break
                    if key.fileobj is self.socket:
                        self._handle_request_noblock()  # type: ignore[attr-defined]

    def stop(self) -> None:
        """Make :meth:`serve` return now and cut every connection still sending its head."""
        self._stop = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        with self._conns_lock:
            heads = [c for c in self._conns.values() if c.in_head]
        for c in heads:
            c.evicted = True
            _abort(c.sock)

    def server_close(self) -> None:
        super().server_close()
        for s in (self._wake_r, self._wake_w):
            try:
                s.close()
            except OSError:
                pass

    # -- admission ----------------------------------------------------------------------------
    def process_request(self, request: Any, client_address: Any) -> None:
        conn = _Conn(next(self._keys), request)
        victim = None
        with self._conns_lock:
            if len(self._conns) >= self.max_connections:
                heads = [c for c in self._conns.values() if c.in_head]
                if not heads:
                    self.refused += 1
                    self.shutdown_request(request)  # every slot is answering: close, not queue
                    return
                victim = min(heads, key=lambda c: c.started)
                victim.evicted = True
                del self._conns[victim.key]
                self.evicted += 1
            self._conns[conn.key] = conn
        if victim is not None:
            _abort(victim.sock)
        try:
            t = threading.Thread(
                target=self._serve_one,
                args=(request, client_address, conn),
                name="e6observe-http-conn",
                daemon=True,
            )
            t.start()
        except Exception:
            self._release(conn)
            raise

    def _head_done(self, conn: _Conn) -> bool:
        """Mark ``conn`` past its head (no longer evictable); False if it was evicted."""
        with self._conns_lock:
            if conn.evicted:
                return False
            conn.in_head = False
            return True

    def _release(self, conn: _Conn) -> None:
        with self._conns_lock:
            if self._conns.get(conn.key) is conn:
                del self._conns[conn.key]

    def _serve_one(self, request: Any, client_address: Any, conn: _Conn) -> None:
        try:
            self._finish(request, client_address, conn)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self._release(conn)
            self.shutdown_request(request)

    def _finish(self, request: Any, client_address: Any, conn: _Conn) -> None:
        ctx = self.ssl_context
        if ctx is None:
            _Handler(request, client_address, self, conn)
            return
        try:
            # Wrapped without the handshake, so that the TLS socket is tracked (and can be cut)
            # while the handshake runs; the handshake counts against the head deadline.
            tls = ctx.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        except (ssl.SSLError, OSError):
            return
        conn.sock = tls
        try:
            if conn.evicted:
                _abort(tls)
            left = conn.started + self.head_timeout - time.monotonic()
            tls.settimeout(max(0.001, left))
            try:
                tls.do_handshake()
            except (ssl.SSLError, OSError, ValueError) as exc:
                # A client without the required certificate, a plain-HTTP client, a port
                # scanner, a handshake too slow: the client's problem, not e6observe's.
                logger.debug(
                    "e6observe: TLS handshake from %s failed: %s", client_address[0], type(exc).__name__
                )
                return
            _Handler(tls, client_address, self, conn)
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints a traceback to stderr here. Clients time out and disconnect all
        # the time; that is logged at debug level only, with no request content.
        logger.debug("e6observe: connection from %s ended with an error", client_address[0], exc_info=False)


def _parse_basic_auth(basic_auth: Optional[str]) -> Optional[tuple[bytes, bytes]]:
    if basic_auth is None:
        return None
    if not isinstance(basic_auth, str) or ":" not in basic_auth:
        # The value itself is never echoed: it is (or contains) a password.
        raise ValueError("basic_auth must be a 'user:password' string")
    user, _, password = basic_auth.partition(":")
    if not user or not password:
        raise ValueError("basic_auth must be a 'user:password' string with both parts non-empty")
    return user.encode("utf-8"), password.encode("utf-8")


def _credentials_ok(header: Optional[str], user: bytes, password: bytes) -> bool:
    """Check an ``Authorization`` header in time independent of where a mismatch is."""
    if not header or not header[:6].lower() == "basic ":
        return False
    try:
        raw = base64.b64decode(header[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    got_user, sep, got_password = raw.partition(b":")
    # Both comparisons always run (no short-circuit), each in constant time.
    user_ok = hmac.compare_digest(got_user, user)
    password_ok = hmac.compare_digest(got_password, password)
    return bool(sep) and user_ok and password_ok


def _simple(
    start_response: Callable[..., Any],
    status: str,
    body: bytes,
    extra: Optional[list[tuple[str, str]]] = None,
) -> list[bytes]:
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    start_response(status, headers + (extra or []))
    return [body]


class _Contained:
    """Iterate a route's response; a failure mid-stream is counted and ends the response."""

    def __init__(self, result: Iterable[bytes]) -> None:
        self._result = result

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._result
        except Exception as exc:
            record_internal_error("server", exc)

    def close(self) -> None:
        close = getattr(self._result, "close", None)
        if close is not None:
            try:
                close()
            except Exception as exc:
                record_internal_error("server", exc)


class MetricsServer:
    """The e6observe HTTP endpoint (``/metrics`` and mounted routes) on a background thread.

    >>> srv = MetricsServer(registry, port=0)   # 127.0.0.1 unless told otherwise
    >>> srv.start(); srv.url                    # 'http://127.0.0.1:40123'
    >>> srv.close()

    ``certfile``/``keyfile`` serve HTTPS; ``client_cafile`` additionally requires a client
    certificate signed by that CA. ``basic_auth="user:password"`` protects every route.
    """

    def __init__(
        self,
        registry: Any,
        addr: str = "127.0.0.1",
        port: int = 0,
        certfile: Optional[str] = None,
        keyfile: Optional[str] = None,
        client_cafile: Optional[str] = None,
        basic_auth: Optional[str] = None,
        max_head_bytes: int = MAX_HEAD_BYTES,
        head_timeout: float = HEAD_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        if (certfile is None) != (keyfile is None):
            raise ValueError("certfile and keyfile must be given together")
        if client_cafile is not None and certfile is None:
            raise ValueError("client_cafile (client-certificate auth) needs certfile and keyfile")
        self.registry = registry
        self.addr = addr or "127.0.0.1"
        self.requested_port = int(port)
        self.certfile = certfile
        self.keyfile = keyfile
        self.client_cafile = client_cafile
        self._auth = _parse_basic_auth(basic_auth)
        if not 1024 <= int(max_head_bytes) <= 1 << 20:
            raise ValueError("max_head_bytes must be within 1024..1048576")
        if not 0 < float(head_timeout) <= 300 or not 0 < float(write_timeout) <= 3600:
            raise ValueError("head_timeout must be within (0, 300] s, write_timeout (0, 3600] s")
        if int(max_connections) < 2:
            raise ValueError("max_connections must be at least 2")
        self.max_head_bytes = int(max_head_bytes)
        self.head_timeout = float(head_timeout)
        self.write_timeout = float(write_timeout)
        self.max_connections = int(max_connections)
        self._routes: dict[str, WSGIApp] = {}
        self._routes_lock = threading.Lock()
        self._httpd: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self.stopping = threading.Event()
        self._metrics_app: Optional[WSGIApp] = None

    # -- routes ----------------------------------------------------------------------------
    def add_route(self, path: str, app: WSGIApp) -> None:
        """Serve the WSGI ``app`` at exactly ``path`` (e.g. ``"/status"``); replaces any app there."""
        if not path.startswith("/"):
            raise ValueError("route paths start with '/'")
        with self._routes_lock:
            self._routes[path] = app

    def remove_route(self, path: str) -> None:
        """Stop serving ``path`` (no error if nothing is mounted there)."""
        with self._routes_lock:
            self._routes.pop(path, None)

    def _metrics(self) -> WSGIApp:
        if self._metrics_app is None:
            from prometheus_client import make_wsgi_app

            self._metrics_app = make_wsgi_app(self.registry)
        return self._metrics_app

    def wsgi_app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """The whole endpoint as one WSGI app: auth, method, then the route for ``PATH_INFO``."""
        if self._auth is not None and not _credentials_ok(environ.get("HTTP_AUTHORIZATION"), *self._auth):
            return _simple(
                start_response,
                "401 Unauthorized",
                b"authentication required\n",
                [("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')],
            )
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            return _simple(
                start_response, "405 Method Not Allowed", b"GET or HEAD only\n", [("Allow", "GET, HEAD")]
            )
        path = environ.get("PATH_INFO") or "/"
        with self._routes_lock:
            app = self._routes.get(path)
        if app is None:
            if path == "/metrics":
                app = self._metrics()
            else:
                return _simple(start_response, "404 Not Found", b"not found\n")
        environ["e6observe.stopping"] = self.stopping
        if method == "HEAD":
            return self._head(app, environ, start_response)
        try:
            return _Contained(app(environ, start_response))
        except Exception as exc:
            return self._failed(exc, start_response)

    def _head(
        self, app: WSGIApp, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """HEAD on any route: the app answers a GET; its status and headers are sent, its body
        is not — a finite body is measured for Content-Length, a stream is never started."""
        environ["REQUEST_METHOD"] = "GET"
        got: list[Any] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            got[:] = [status, list(headers)]
            return lambda _data: None

        result: Any = None
        try:
            result = app(environ, capture)
            length = sum(len(b) for b in result) if isinstance(result, (list, tuple)) else None
        except Exception as exc:
            return self._failed(exc, start_response)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:
                    record_internal_error("server", exc)
        if not got:
            return self._failed(RuntimeError("route app did not start a response"), start_response)
        status, headers = got
        if length is not None and not any(k.lower() == "content-length" for k, _ in headers):
            headers.append(("Content-Length", str(length)))
        start_response(status, headers)
        return []

    @staticmethod
    def _failed(exc: Exception, start_response: Callable[..., Any]) -> Iterable[bytes]:
        record_internal_error("server", exc)
        try:
            return _simple(
                start_response,
                "500 Internal Server Error",
                b"internal error (counted in e6observe_internal_errors_total)\n",
            )
        except Exception:  # start_response already called by the failing app
            return []

    # -- lifecycle -------------------------------------------------------------------------
    def _ssl_context(self) -> Optional[ssl.SSLContext]:
        if self.certfile is None:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(self.certfile, self.keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise MetricsServerTLSError(
                getattr(exc, "errno", None) or errno.EINVAL,
                f"e6observe metrics endpoint: cannot load TLS certificate {self.certfile!r} / "
                f"key {self.keyfile!r}: {type(exc).__name__}",
            ) from None
        if self.client_cafile is not None:
            try:
                ctx.load_verify_locations(cafile=self.client_cafile)
            except (OSError, ssl.SSLError) as exc:
                raise MetricsServerTLSError(
                    getattr(exc, "errno", None) or errno.EINVAL,
                    f"e6observe metrics endpoint: cannot load client CA {self.client_cafile!r}: "
                    f"{type(exc).__name__}",
                ) from None
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def start(self) -> MetricsServer:
        """Bind and serve on a daemon thread. Idempotent. Raises :class:`MetricsServerError`."""
        if self._httpd is not None:
            return self
        ctx = self._ssl_context()
        where = f"{self.addr}:{self.requested_port}"
        literal = _literal_family(self.addr)
        try:
            # An ASCII host goes in as bytes: for a str, getaddrinfo loads the idna codec (and
            # with it unicodedata) just to encode it.
            host: Any = self.addr.encode("ascii") if self.addr.isascii() else self.addr
            family: socket.AddressFamily
            if literal is None:
                infos = socket.getaddrinfo(
                    host, self.requested_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
                )
                family = infos[0][0]
            else:
                family = literal
        except socket.gaierror as exc:
            raise MetricsServerError(
                errno.EADDRNOTAVAIL, f"e6observe metrics endpoint: cannot resolve {where}: {exc.strerror}"
            ) from None

        class _Bound(_Server):
            address_family = family

        try:
            httpd = _Bound((self.addr, self.requested_port), _Handler)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            hint = (
                " (already in use: pick another prometheus_port)" if (exc.errno == errno.EADDRINUSE) else ""
            )
            raise MetricsServerError(
                exc.errno, f"e6observe metrics endpoint: cannot listen on {where}: {reason}{hint}"
            ) from None
        httpd.ssl_context = ctx
        httpd.max_head_bytes = self.max_head_bytes
        httpd.head_timeout = self.head_timeout
        httpd.write_timeout = self.write_timeout
        httpd.max_connections = self.max_connections
        httpd.set_app(self.wsgi_app)
        self.stopping.clear()
        t = threading.Thread(target=httpd.serve, name="e6observe-http", daemon=True)
        self._httpd, self._thread = httpd, t
        t.start()
        self._warn_exposure(str(httpd.server_address[0]), ctx is not None)
        return self

    def _warn_exposure(self, bound: str, tls: bool) -> None:
        """One warning when the endpoint is reachable beyond this machine without protection."""
        try:
            loopback = ipaddress.ip_address(str(bound).split("%", 1)[0]).is_loopback
        except ValueError:
            loopback = False
        if loopback:
            return
        if self._auth is None and not tls:
            logger.warning(
                "e6observe: the endpoint %s listens beyond loopback with neither TLS "
                "nor basic auth: anyone who can reach it reads /metrics, the status "
                "page and /events. Set basic_auth and tls_certfile/tls_keyfile "
                "(E6OBSERVE_*), or bind 127.0.0.1 if only local scrapers need it",
                self.url,
            )
        elif not tls:
            logger.warning(
                "e6observe: basic auth on %s without TLS sends the password in clear "
                "text; set tls_certfile/tls_keyfile",
                self.url,
            )

    @property
    def port(self) -> int:
        """The bound port (the real one when started with ``port=0``), else the requested one."""
        if self._httpd is not None:
            return int(self._httpd.server_address[1])
        return self.requested_port

    @property
    def url(self) -> str:
        """``http(s)://host:port`` of the endpoint (IPv6 hosts in brackets)."""
        host = self.addr if ":" not in self.addr else f"[{self.addr}]"
        scheme = "https" if self.certfile else "http"
        return f"{scheme}://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def close(self, timeout: float = 2.0) -> None:
        """Stop accepting, tell streaming routes to end, free the port. Idempotent.

        The accept loop is woken through a socket pair, not polled: this returns as soon as
        the serving thread has left its loop (connections being answered finish on their own
        threads; ones still sending their head are cut)."""
        httpd, t = self._httpd, self._thread
        self._httpd = self._thread = None
        self.stopping.set()
        if httpd is None:
            return
        httpd.stop()
        if t is not None and t.is_alive() and t is not threading.current_thread():
            t.join(timeout)
        httpd.server_close()

    def abandon(self) -> None:
        """Release the listening socket without stopping a serving thread (child after fork).

        After ``fork()`` the child holds a copy of the socket but not the thread serving it;
        ``close()`` would wait for that thread forever. This only closes the child's copy.
        """
        httpd = self._httpd
        self._httpd = self._thread = None
        if httpd is not None:
            # The parent's connections too: the child's copies would keep them open (a client
            # would not see the end of its response until the child exits). No lock: in the
            # child no other thread runs, and the lock may have been held at fork time.
            conns = [c.sock for c in list(httpd._conns.values())]
            for sock in [httpd.socket, httpd._wake_r, httpd._wake_w] + conns:
                try:
                    sock.close()
                except OSError:
                    pass

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "MetricsServer",
    "MetricsServerError",
    "MetricsServerTLSError",
    "MAX_CONNECTIONS",
    "MAX_HEAD_BYTES",
    "HEAD_TIMEOUT",
    "WRITE_TIMEOUT",
]
