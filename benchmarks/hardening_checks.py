"""Issue 12's small findings, before/after in one run (as root: it mounts a read-only tmpfs).

    .venv/bin/python benchmarks/hardening_checks.py

Blank basic auth and TLS paths and a shortened address from the environment, non-ASCII integers,
the TLS pairing message, a read-only multi-process directory, HEAD /metrics and /events, the
listen backlog. To see an older version's behaviour, run it from outside this tree with
``PYTHONPATH=<that checkout>``. Everything on 127.0.0.1; it stops by itself.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import tempfile
import time
from typing import Any

from e6observe.config import ConfigError, Options

SHOWN = ("basic_auth", "tls_client_cafile", "prometheus_addr", "prometheus_port")


def resolve(env: dict[str, str]) -> Any:
    try:
        o = Options.resolve({}, environ=env)
    except ConfigError as e:
        return "ConfigError: " + str(e)[:110]
    return {k: getattr(o, k) for k in SHOWN if "E6OBSERVE_" + k.upper() in env}


def raw(port: int, request: bytes, seconds: float = 3.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=seconds) as s:
        s.sendall(request)
        out = b""
        end = time.monotonic() + seconds
        try:
            while time.monotonic() < end:
                chunk = s.recv(65536)
                if not chunk:
                    return out
                out += chunk
        except socket.timeout:
            pass
        return out + b" <still open after %gs>" % seconds


def endpoint() -> Any:
    from e6observe import _api

    inst = _api._active
    sink = next((o for c, o, _ in inst.sinks if c == "sink.prometheus"), None) if inst else None
    return getattr(sink, "server", None)


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="LOG %(message)s")
    print("BASIC_AUTH '\\n':", resolve({"E6OBSERVE_BASIC_AUTH": "\n"}))
    print("BASIC_AUTH ' \\t':", resolve({"E6OBSERVE_BASIC_AUTH": " \t"}))
    print("PROMETHEUS_ADDR '0':", resolve({"E6OBSERVE_PROMETHEUS_ADDR": "0"}))
    for v in ("1_000", "\u0661\u0662\u0663", "\uff11\uff12\uff13"):
        print("PROMETHEUS_PORT", ascii(v), ":", resolve({"E6OBSERVE_PROMETHEUS_PORT": v}))
    fd, cert = tempfile.mkstemp(suffix=".pem")
    os.write(fd, b"x")
    os.close(fd)
    try:
        print(
            "TLS_CLIENT_CAFILE ' ' with a cert and key:",
            resolve(
                {
                    "E6OBSERVE_TLS_CERTFILE": cert,
                    "E6OBSERVE_TLS_KEYFILE": cert,
                    "E6OBSERVE_TLS_CLIENT_CAFILE": " ",
                }
            ),
        )
        print("TLS_CERTFILE alone:", resolve({"E6OBSERVE_TLS_CERTFILE": cert}))
    finally:
        os.unlink(cert)

    import e6observe
    from e6observe.endpoint import server

    ro = tempfile.mkdtemp(prefix="e6o-ro-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", ro], check=True)
    try:
        e6observe.instrument(prometheus_port=0, otel=False, multiprocess_dir=ro)
        srv = endpoint()
        print("read-only multi-process dir, endpoint running:", bool(srv and srv.running))
        e6observe.uninstrument()
    finally:
        subprocess.run(["umount", ro], check=False)
        os.rmdir(ro)

    e6observe.instrument(prometheus_port=0, otel=False)
    try:
        srv = endpoint()
        h = raw(srv.port, b"HEAD /metrics HTTP/1.0\r\n\r\n")
        print("HEAD /metrics:", h[:12], len(h), "bytes")
        h = raw(srv.port, b"HEAD /events HTTP/1.0\r\n\r\n", 2.0)
        print("HEAD /events:", h[:12], len(h), "bytes, ends", h[-24:])
    finally:
        e6observe.uninstrument()
    backlog = getattr(server, "LISTEN_BACKLOG", None)
    print("listen backlog:", backlog or f"socketserver's {server.WSGIServer.request_queue_size}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
