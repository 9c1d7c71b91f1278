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
* **bounds** — at most :data:`MAX_CONNECTIONS` connections are served at once (further ones are
  closed at accept), idle sockets time out, and nothing is ever written to stderr;
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
import logging
import socket
import ssl
import threading
from socketserver import TCPServer, ThreadingMixIn
from typing import Any, Callable, Iterable, Iterator, Optional
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from ._safe import record_internal_error

logger = logging.getLogger("e6observe")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

#: Connections served at the same time; more are closed immediately (a scraper retries).
MAX_CONNECTIONS = 64
#: Seconds a connection may sit idle (or take to finish its TLS handshake) before it is closed.
SOCKET_TIMEOUT = 30.0
REALM = "e6observe"


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


class _Handler(WSGIRequestHandler):
    """wsgiref's request handler, silent, with an idle timeout."""

    timeout = SOCKET_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        # Request lines are not logged at all: paths and query strings are the client's text.
        return None

    def get_stderr(self) -> Any:
        return _NULL


class _Server(ThreadingMixIn, WSGIServer):
    """A thread per connection, bounded, quiet, with the TLS handshake off the accept loop."""

    daemon_threads = True  # an open /events stream must not keep the application alive
    block_on_close = False
    ssl_context: Optional[ssl.SSLContext] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        # HTTPServer.server_bind + WSGIServer.server_bind, less ``socket.getfqdn(host)``: a
        # reverse DNS lookup at every start (slow where DNS is), and it loads the idna codec
        # (with unicodedata, ~0.4 MiB of RSS). SERVER_NAME is the bound address instead.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = port
        self.setup_environ()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)  # over the bound: close rather than queue
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        ctx = self.ssl_context
        if ctx is None:
            self.RequestHandlerClass(request, client_address, self)  # type: ignore[arg-type]
            return
        request.settimeout(SOCKET_TIMEOUT)
        try:
            tls = ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            # A client without the required certificate, a plain-HTTP client, a port scanner:
            # the client's problem, not e6observe's, so not an internal error.
            logger.debug("e6observe: TLS handshake from %s failed: %s", client_address[0],
                         type(exc).__name__)
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)  # type: ignore[arg-type]
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints a traceback to stderr here. Clients time out and disconnect all
        # the time; that is logged at debug level only, with no request content.
        logger.debug("e6observe: connection from %s ended with an error", client_address[0],
                     exc_info=False)


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


def _simple(start_response: Callable[..., Any], status: str, body: bytes,
            extra: Optional[list[tuple[str, str]]] = None) -> list[bytes]:
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

    def __init__(self, registry: Any, addr: str = "127.0.0.1", port: int = 0,
                 certfile: Optional[str] = None, keyfile: Optional[str] = None,
                 client_cafile: Optional[str] = None, basic_auth: Optional[str] = None) -> None:
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
        """The whole endpoint as one WSGI app: auth, then the route for ``PATH_INFO``."""
        if self._auth is not None and not _credentials_ok(
                environ.get("HTTP_AUTHORIZATION"), *self._auth):
            return _simple(start_response, "401 Unauthorized", b"authentication required\n",
                           [("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')])
        path = environ.get("PATH_INFO") or "/"
        with self._routes_lock:
            app = self._routes.get(path)
        if app is None:
            if path == "/metrics":
                app = self._metrics()
            else:
                return _simple(start_response, "404 Not Found", b"not found\n")
        environ["e6observe.stopping"] = self.stopping
        try:
            return _Contained(app(environ, start_response))
        except Exception as exc:
            record_internal_error("server", exc)
            try:
                return _simple(start_response, "500 Internal Server Error",
                               b"internal error (counted in e6observe_internal_errors_total)\n")
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
                f"key {self.keyfile!r}: {type(exc).__name__}") from None
        if self.client_cafile is not None:
            try:
                ctx.load_verify_locations(cafile=self.client_cafile)
            except (OSError, ssl.SSLError) as exc:
                raise MetricsServerTLSError(
                    getattr(exc, "errno", None) or errno.EINVAL,
                    f"e6observe metrics endpoint: cannot load client CA {self.client_cafile!r}: "
                    f"{type(exc).__name__}") from None
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def start(self) -> MetricsServer:
        """Bind and serve on a daemon thread. Idempotent. Raises :class:`MetricsServerError`."""
        if self._httpd is not None:
            return self
        ctx = self._ssl_context()
        where = f"{self.addr}:{self.requested_port}"
        try:
            # An ASCII host goes in as bytes: for a str, getaddrinfo loads the idna codec (and
            # with it unicodedata) just to encode it.
            host: Any = self.addr.encode("ascii") if self.addr.isascii() else self.addr
            infos = socket.getaddrinfo(host, self.requested_port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
            family = infos[0][0]
        except socket.gaierror as exc:
            raise MetricsServerError(errno.EADDRNOTAVAIL,
                                     f"e6observe metrics endpoint: cannot resolve {where}: "
                                     f"{exc.strerror}") from None

        class _Bound(_Server):
            address_family = family

        try:
            httpd = _Bound((self.addr, self.requested_port), _Handler)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            hint = " (already in use: pick another prometheus_port)" if (
                exc.errno == errno.EADDRINUSE) else ""
            raise MetricsServerError(exc.errno, f"e6observe metrics endpoint: cannot listen on "
                                                f"{where}: {reason}{hint}") from None
        httpd.ssl_context = ctx
        httpd.set_app(self.wsgi_app)
        self.stopping.clear()
        t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                             name="e6observe-http", daemon=True)
        self._httpd, self._thread = httpd, t
        t.start()
        if self._auth is not None and ctx is None and self.addr not in ("127.0.0.1", "::1",
                                                                        "localhost"):
            logger.warning("e6observe: basic auth on %s without TLS sends the password in clear "
                           "text; set tls_certfile/tls_keyfile", self.url)
        return self

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
        """Stop accepting, tell streaming routes to end, free the port. Idempotent."""
        httpd, t = self._httpd, self._thread
        self._httpd = self._thread = None
        self.stopping.set()
        if httpd is None:
            return
        if t is not None and t.is_alive() and t is not threading.current_thread():
            httpd.shutdown()
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
            try:
                httpd.socket.close()
            except OSError:
                pass

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["MetricsServer", "MetricsServerError", "MetricsServerTLSError", "MAX_CONNECTIONS"]
