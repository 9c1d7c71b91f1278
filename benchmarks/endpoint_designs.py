"""Which connection policy keeps scrapes alive under slowloris (the measurement behind
docs/ARCHITECTURE.md, "The endpoint under attack").

    .venv/bin/python benchmarks/endpoint_designs.py [--seconds 30] [--waitress PATH]

Each design serves the same /metrics (an instrumented recorder's registry) on 127.0.0.1 while 64
connections trickle one header line every 10 s and reopen at once when dropped; a scraper fetches
/metrics once a second (2 s timeout). The designs run one after another:

* ``bounded, deadline only``: e6observe's server with eviction switched off (a full server closes
  new connections) — the head deadline (5 s) alone;
* ``bounded, evict oldest head``: e6observe's server as shipped;
* ``waitress``: waitress 3 with its defaults except ``connection_limit=64`` (only with
  ``--waitress DIR``, a directory where ``pip install --target DIR waitress`` put it: it is not a
  dependency of e6observe).

Also prints each design's median scrape time without an attack (200 scrapes). The standard
library's server as e6observe used it before issue 12 is measured by
``benchmarks/endpoint_attack.py slowloris`` on a checkout of that version (0 of 60).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
import attacks  # noqa: E402

from e6observe.endpoint import server as server_mod  # noqa: E402
from e6observe.endpoint.server import MetricsServer  # noqa: E402
from e6observe.recorder import Recorder  # noqa: E402
from e6observe.sinks.prometheus import PrometheusSink  # noqa: E402


def registry() -> Any:
    rec = Recorder()
    sink = PrometheusSink(rec)
    for i in range(2000):
        rec.query_finished("blue" if i % 3 else "green", "ok", 0.001 * (i % 40))
        rec.rpc_histogram("executeStatement", "blue", "OK").observe(0.0005 * (i % 30))
    return sink.registry


class _NoEvict(server_mod._Server):
    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            full = len(self._conns) >= self.max_connections
        if full:
            self.refused += 1
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)


def ours(reg: Any, evict: bool) -> tuple[int, Callable[[], None]]:
    srv = MetricsServer(reg, port=0)
    if not evict:
        orig = server_mod._Server
        server_mod._Server = _NoEvict  # type: ignore[misc]
        try:
            srv.start()
        finally:
            server_mod._Server = orig  # type: ignore[misc]
    else:
        srv.start()
    return srv.port, srv.close


def waitress_server(reg: Any) -> tuple[int, Callable[[], None]]:
    from prometheus_client import make_wsgi_app
    from waitress.server import create_server

    srv = create_server(make_wsgi_app(reg), host="127.0.0.1", port=0, connection_limit=64, threads=4)
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    return int(srv.effective_port), srv.close


def measure(port: int, seconds: float) -> dict[str, Any]:
    times = []
    for _ in range(200):
        t0 = time.perf_counter()
        code, _ = attacks.http_get(port)
        times.append((time.perf_counter() - t0) * 1000)
        assert code == 200
    with attacks.Slowloris(port, connections=64, interval=10.0, max_seconds=seconds + 30) as atk:
        time.sleep(2)
        results = attacks.scrape_loop(
            lambda: attacks.http_get(port, timeout=2.0)[0] == 200, int(seconds), 1.0
        )
        reconnects = atk.reconnects
    return {
        "scrape_ms_median_idle": round(statistics.median(times), 2),
        "ok": sum(results),
        "scrapes": len(results),
        "attacker_reconnects": reconnects,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--waitress", metavar="DIR", default=None)
    args = ap.parse_args()
    reg = registry()
    designs: list[tuple[str, Callable[[], tuple[int, Callable[[], None]]]]] = [
        ("bounded, deadline only", lambda: ours(reg, evict=False)),
        ("bounded, evict oldest head", lambda: ours(reg, evict=True)),
    ]
    if args.waitress:
        sys.path.insert(0, args.waitress)
        designs.append(("waitress (connection_limit=64)", lambda: waitress_server(reg)))
    for name, make in designs:
        port, close = make()
        try:
            out = measure(port, args.seconds)
        finally:
            close()
        print(f"{name:34s} {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
