"""``e6observe status`` and ``e6observe tail``: read an e6observe endpoint from a terminal.

``status --url URL`` prints the current blue/green state of the process behind ``URL``
(its ``/status`` document); ``tail --url URL`` prints switch events from ``/events`` as they
happen, reconnecting with ``Last-Event-ID`` when the stream drops, so nothing the ring still
holds is missed. Both use only the standard library, and both end with a one-line error and exit
status 1 when the endpoint cannot be reached (no traceback).

Endpoint credentials, when the endpoint requires basic auth, come from ``E6OBSERVE_BASIC_AUTH``
(``user:password``) or ``--basic-auth-file`` — never from the command line — and are never
printed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Iterator, Optional, TextIO
from urllib.parse import urlsplit

DEFAULT_URL = "http://127.0.0.1:9464"
ENV_URL = "E6OBSERVE_URL"
ENV_BASIC_AUTH = "E6OBSERVE_BASIC_AUTH"
#: Longest line accepted from the event stream (events are a few hundred bytes).
MAX_LINE = 64 * 1024
#: A stream that sends nothing (not even a keep-alive, every 10 s) this long is reconnected.
STREAM_READ_TIMEOUT = 35.0
DEFAULT_KINDS = ("applied", "announced")
ALL_KINDS = ("detected", "announced", "applied", "mismatch", "cache_cleared", "retry")

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2


class ClientError(Exception):
    """The endpoint could not be read; the message is the one line the command prints."""


# -- HTTP ----------------------------------------------------------------------------------------
class Endpoint:
    """Where and how to reach an e6observe endpoint."""

    def __init__(
        self,
        url: str,
        timeout: float = 5.0,
        cafile: Optional[str] = None,
        insecure: bool = False,
        basic_auth: Optional[str] = None,
    ) -> None:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"--url must be an http:// or https:// URL, not {url!r}")
        if "@" in parts.netloc:
            raise ValueError("--url must not contain credentials; use E6OBSERVE_BASIC_AUTH")
        self.base = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self.timeout = timeout
        self._auth = None
        if basic_auth:
            if ":" not in basic_auth:
                raise ValueError(f"{ENV_BASIC_AUTH} must be 'user:password'")
            self._auth = "Basic " + base64.b64encode(basic_auth.encode("utf-8")).decode("ascii")
        self._ctx: Optional[ssl.SSLContext] = None
        if parts.scheme == "https":
            ctx = ssl.create_default_context(cafile=cafile)
            if insecure:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._ctx = ctx

    def url(self, path: str) -> str:
        return self.base + path

    def open(
        self, path: str, headers: Optional[dict[str, str]] = None, timeout: Optional[float] = None
    ) -> Any:
        """GET ``path``; the response, or :class:`ClientError` with a one-line reason."""
        req = urllib.request.Request(self.url(path), headers=dict(headers or {}))
        if self._auth:
            req.add_header("Authorization", self._auth)
        try:
            return urllib.request.urlopen(req, timeout=timeout or self.timeout, context=self._ctx)
        except urllib.error.HTTPError as exc:
            hint = ""
            if exc.code == 401:
                hint = f" (the endpoint needs basic auth: set {ENV_BASIC_AUTH} or --basic-auth-file)"
            elif exc.code == 404:
                hint = " (not an e6observe endpoint, or one without the status routes)"
            elif exc.code == 503:
                hint = " (busy: too many event streams, or shutting down)"
            raise ClientError(f"{self.url(path)} answered {exc.code} {exc.reason}{hint}") from None
        except urllib.error.URLError as exc:
            raise ClientError(f"cannot reach {self.url(path)}: {_reason(exc.reason)}") from None
        except (OSError, ValueError) as exc:
            raise ClientError(f"cannot reach {self.url(path)}: {_reason(exc)}") from None

    def get_json(self, path: str) -> Any:
        resp = self.open(path)
        try:
            with resp:
                raw = resp.read(16 * 1024 * 1024 + 1)
        except (OSError, socket.timeout) as exc:
            raise ClientError(f"reading {self.url(path)} failed: {_reason(exc)}") from None
        if len(raw) > 16 * 1024 * 1024:
            raise ClientError(f"{self.url(path)} sent more than 16 MiB; not an e6observe status")
        try:
            return json.loads(raw)
        except ValueError:
            raise ClientError(f"{self.url(path)} did not answer JSON (not an e6observe endpoint?)") from None


def _reason(exc: object) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the process running and the port right?)"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({exc.verify_message}); use --cacert"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({exc.reason or exc})"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = str(exc).strip()
    return text or type(exc).__name__


def _read_basic_auth(path: Optional[str]) -> Optional[str]:
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                value = fh.read(4096).strip()
        except OSError as exc:
            raise ValueError(f"cannot read --basic-auth-file {path}: {exc.strerror or exc}") from None
        return value or None
    return os.environ.get(ENV_BASIC_AUTH) or None


def _add_endpoint_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", default=None, help=f"the e6observe endpoint (default: ${ENV_URL} or {DEFAULT_URL})"
    )
    parser.add_argument(
        "--cacert", metavar="PATH", default=None, help="CA certificate (PEM) to verify an https:// endpoint"
    )
    parser.add_argument(
        "--insecure", action="store_true", help="do not verify the https:// endpoint's certificate"
    )
    parser.add_argument(
        "--basic-auth-file",
        metavar="PATH",
        default=None,
        help=f"file holding user:password for the endpoint (else ${ENV_BASIC_AUTH})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _endpoint(args: argparse.Namespace, timeout: float = 5.0) -> Endpoint:
    url = args.url or os.environ.get(ENV_URL) or DEFAULT_URL
    return Endpoint(
        url,
        timeout=timeout,
        cafile=args.cacert,
        insecure=args.insecure,
        basic_auth=_read_basic_auth(args.basic_auth_file),
    )


def _fail(command: str, message: str, err: Optional[TextIO] = None) -> int:
    (err or sys.stderr).write(f"e6observe {command}: error: {message}\n")
    return EXIT_FAIL


# -- formatting ------------------------------------------------------------------------------------
def _ts(unix: Any) -> str:
    try:
        t = float(unix)
    except (TypeError, ValueError):
        return "-"
    if t <= 0:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"


def _secs(value: Any) -> str:
    try:
        s = float(value)
    except (TypeError, ValueError):
        return "-"
    if s < 1:
        return f"{s * 1000:.1f} ms"
    return f"{s:.2f} s"


def _ago(unix: Any, now: float) -> str:
    try:
        t = float(unix)
    except (TypeError, ValueError):
        return ""
    return f" ({max(0.0, now - t):.0f} s ago)" if t > 0 else ""


def _bytes(n: Any) -> str:
    try:
        v = float(n)
    except (TypeError, ValueError):
        return "-"
    if v <= 0:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if v < 1024 or unit == "GiB":
            return f"{v:.1f} {unit}" if unit != "B" else f"{v:.0f} B"
        v /= 1024
    return "-"


def _text(value: Any, limit: int = 64) -> str:
    """A server-sent value as a short, single-line string (it is someone else's data)."""
    s = str(value) if value is not None else ""
    s = "".join(ch if ch.isprintable() else "?" for ch in s)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def format_status(doc: dict[str, Any], url: str, now: Optional[float] = None) -> str:
    """The human form of a ``/status`` document."""
    now = time.time() if now is None else now
    src = doc.get("source") or {}
    who = ", ".join(
        p
        for p in (
            _text(src.get("service_name")) if src.get("service_name") else "",
            f"pid {_text(src.get('pid'))}" if src.get("pid") else "",
            f"host {_text(src.get('host_name'))}" if src.get("host_name") else "",
            f"connector {_text(src.get('connector_version'))}" if src.get("connector_version") else "",
        )
        if p
    )
    lines = [f"e6observe status {url}" + (f"  ({who})" if who else "")]

    def row(label: str, value: str) -> None:
        lines.append(f"  {label:<12} {value}")

    row("active", _text(doc.get("active") or "none"))
    pending = doc.get("pending") or ""
    row("pending", f"{_text(pending)} (waiting {_secs(doc.get('pending_age_seconds'))})" if pending else "-")
    row("last switch", _ts(doc.get("last_switch_unix")) + _ago(doc.get("last_switch_unix"), now))
    parts = [
        f"{_text(s.get('from_strategy'))}→{_text(s.get('to_strategy'))} "
        f"{_text(s.get('cause'))}: {_text(s.get('count'))}"
        for s in doc.get("switches") or []
        if isinstance(s, dict) and s.get("count")
    ]
    row("switches", f"{_text(doc.get('switch_count', 0))}" + (f"  ({', '.join(parts)})" if parts else ""))
    row("mismatches", _text(doc.get("mismatch_count", 0)))
    inflight = doc.get("in_flight") or {}
    row("in flight", ", ".join(f"{_text(k)} {_text(v)}" for k, v in inflight.items() if v) or "0")
    for lat in doc.get("latency") or []:
        if isinstance(lat, dict) and lat.get("count"):
            row(
                f"{_text(lat.get('kind'), 8)} latency",
                f"{_text(lat.get('strategy'))}: n={_text(lat.get('count'))} "
                f"p50 {_secs(lat.get('p50_seconds'))}  p90 {_secs(lat.get('p90_seconds'))}  "
                f"p99 {_secs(lat.get('p99_seconds'))}",
            )
    mem = doc.get("memory")
    if isinstance(mem, dict):
        row("memory", f"rss {_bytes(mem.get('rss_bytes'))}, unique {_bytes(mem.get('uss_bytes'))}")
    w = doc.get("watcher")
    if isinstance(w, dict):
        row(
            "watcher",
            ("running" if w.get("running") else "stopped")
            + (
                f", last beat {_ago(w.get('last_run_unix'), now).strip(' ()')}"
                if w.get("last_run_unix")
                else ", no beat yet"
            ),
        )
    acc = doc.get("events") or {}
    if acc:
        dropped = sum(v for v in (acc.get("dropped") or {}).values() if isinstance(v, (int, float)))
        row(
            "events",
            f"{_text(acc.get('emitted', 0))} emitted, {_text(acc.get('evicted', 0))} "
            f"evicted, {dropped:g} dropped",
        )
    errs = doc.get("internal_errors") or {}
    if errs:
        row("int. errors", ", ".join(f"{_text(k)} {_text(v)}" for k, v in errs.items()))
    return "\n".join(lines)


def kind_name(kind: Any) -> str:
    """``EVENT_KIND_APPLIED`` (the proto3 JSON the endpoint sends) -> ``applied``."""
    k = str(kind or "")
    return k[len("EVENT_KIND_") :].lower() if k.startswith("EVENT_KIND_") else k.lower()


def format_event(ev: dict[str, Any]) -> str:
    """One line for an event: time, kind, what happened."""
    kind = _text(kind_name(ev.get("kind")), 16)
    frm, to = _text(ev.get("from_strategy") or "none"), _text(ev.get("to_strategy") or "none")
    if kind == "applied":
        what = f"{frm} → {to}  cause={_text(ev.get('cause'))}"
        if ev.get("drain_seconds") is not None:
            what += f" drain={_secs(ev.get('drain_seconds'))}"
        what += f" pinned={_text(ev.get('pinned_queries') or 0)}"
    elif kind == "announced":
        what = f"{frm} → {to} pending"
    elif kind == "detected":
        what = f"strategy {to}"
    elif kind == "mismatch":
        what = f"456 for {_text(ev.get('strategy'))} on {_text(ev.get('method'))}"
    elif kind == "cache_cleared":
        what = f"cache cleared (was {frm})"
    elif kind == "retry":
        what = f"attempt {_text(ev.get('attempt'))} reason={_text(ev.get('reason'))}"
    else:
        what = ""
    ident = f"seq={_text(ev.get('seq'))} pid={_text(ev.get('pid'))}"
    return f"{_ts(ev.get('time_unix'))}  {kind:<13} {what}  {ident}"


# -- status ------------------------------------------------------------------------------------------
def add_arguments_status(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``e6observe status``."""
    _add_endpoint_arguments(parser)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (default: 5)")


def run_status(args: argparse.Namespace, out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> int:
    """Print the endpoint's status; 0, or 1 with one line on stderr when it cannot be read."""
    out = out or sys.stdout
    try:
        ep = _endpoint(args, timeout=args.timeout)
    except ValueError as exc:
        (err or sys.stderr).write(f"e6observe status: error: {exc}\n")
        return EXIT_USAGE
    try:
        doc = ep.get_json("/status")
    except ClientError as exc:
        return _fail("status", str(exc), err)
    if not isinstance(doc, dict) or "active" not in doc:
        return _fail("status", f"{ep.url('/status')} is not an e6observe status document", err)
    if args.json:
        out.write(json.dumps(doc, indent=2) + "\n")
    else:
        out.write(format_status(doc, ep.base) + "\n")
    return EXIT_OK


# -- tail --------------------------------------------------------------------------------------------
def add_arguments_tail(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``e6observe tail``."""
    _add_endpoint_arguments(parser)
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--all", action="store_true", help="print every event kind, not only switches")
    g.add_argument(
        "--kind",
        action="append",
        choices=ALL_KINDS,
        default=None,
        help="print this kind (repeatable; default: applied and announced)",
    )
    parser.add_argument(
        "--since",
        type=int,
        default=None,
        metavar="SEQ",
        help="first replay the events after SEQ that the endpoint still holds "
        "(0: all of them); default: only new events",
    )
    parser.add_argument("--count", type=int, default=None, metavar="N", help="exit after printing N events")
    parser.add_argument(
        "--reconnect-seconds",
        type=float,
        default=30.0,
        help="how long to keep reconnecting after the stream drops (default: 30)",
    )


def iter_sse(lines: Iterator[bytes]) -> Iterator[tuple[Optional[str], str]]:
    """(id, data) of each server-sent event in ``lines``; comments and ``retry:`` skipped."""
    data: list[str] = []
    ev_id: Optional[str] = None
    for raw in lines:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if data:
                yield ev_id, "\n".join(data)
            data, ev_id = [], None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            data.append(value)
        elif field == "id":
            ev_id = value


def _lines(resp: Any) -> Iterator[bytes]:
    while True:
        line = resp.readline(MAX_LINE)
        if not line:
            return
        yield line


def run_tail(args: argparse.Namespace, out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> int:
    """Print events as they happen until interrupted (or ``--count`` reached)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        ep = _endpoint(args)
    except ValueError as exc:
        err.write(f"e6observe tail: error: {exc}\n")
        return EXIT_USAGE
    kinds = set(ALL_KINDS) if args.all else set(args.kind or DEFAULT_KINDS)
    if args.count is not None and args.count < 1:
        err.write("e6observe tail: error: --count must be at least 1\n")
        return EXIT_USAGE
    printed = 0
    last_id: Optional[str] = None
    last_pid: Any = None
    last_seq: Optional[int] = None
    connected_once = False
    lost_at: Optional[float] = None
    delay = 0.5
    while True:
        headers = {"Accept": "text/event-stream"}
        path = "/events"
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        elif args.since is not None:
            path += f"?since={max(0, args.since)}"
        try:
            resp = ep.open(path, headers, timeout=STREAM_READ_TIMEOUT)
        except ClientError as exc:
            if not connected_once:
                return _fail("tail", str(exc), err)
            if lost_at is not None and time.monotonic() - lost_at > args.reconnect_seconds:
                return _fail("tail", f"{exc} (gave up after {args.reconnect_seconds:g} s)", err)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        if not connected_once:
            err.write(
                f"e6observe tail: following {ep.url('/events')} "
                f"({', '.join(sorted(kinds))}); Ctrl-C to stop\n"
            )
            err.flush()
        elif lost_at is not None:
            err.write("e6observe tail: reconnected\n")
            err.flush()
        connected_once, lost_at, delay = True, None, 0.5
        try:
            with resp:
                for ev_id, data in iter_sse(_lines(resp)):
                    if ev_id is not None:
                        last_id = ev_id
                    try:
                        ev = json.loads(data)
                    except ValueError:
                        continue
                    if not isinstance(ev, dict):
                        continue
                    seq, pid = ev.get("seq"), ev.get("pid")
                    if pid != last_pid:
                        last_seq = None  # a new process: its seq numbers start again
                    if isinstance(seq, int) and last_seq is not None and seq > last_seq + 1:
                        err.write(
                            f"e6observe tail: {seq - last_seq - 1} event(s) were no longer "
                            "held by the endpoint (ring overflow)\n"
                        )
                    if isinstance(seq, int):
                        last_seq, last_pid = seq, pid
                    if kind_name(ev.get("kind")) not in kinds:
                        continue
                    out.write((json.dumps(ev) if args.json else format_event(ev)) + "\n")
                    out.flush()
                    printed += 1
                    if args.count is not None and printed >= args.count:
                        return EXIT_OK
        except BrokenPipeError:
            return EXIT_OK
        except (OSError, socket.timeout, ValueError):
            pass  # dropped or silent stream: reconnect below
        lost_at = time.monotonic()
        err.write("e6observe tail: stream ended; reconnecting\n")
        err.flush()
