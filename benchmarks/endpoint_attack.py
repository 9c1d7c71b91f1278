"""Attack the in-process endpoint of an instrumented application at full size (issue 12).

    .venv/bin/python benchmarks/endpoint_attack.py flood     [--rounds 3]
    .venv/bin/python benchmarks/endpoint_attack.py slowloris [--auth] [--tls] [--probe] [--seconds 60]

Starts the simulator (benchmarks/simproc.py) and the application under attack
(benchmarks/attack_app.py: the real connector at ~200 queries/s, ``instrument(prometheus_port=P)``),
or ``e6observe probe`` with ``--probe``; everything on 127.0.0.1, every loop bounded.

* ``flood``: 64 connections, each sending 98 header lines of 65 kB (6.4 MB per request), for
  ``--rounds`` rounds 5 s apart. Prints the application's RSS before / peak / 10 s after, its
  queries per second (median before, lowest during), 456 errors before and after, and how the
  requests ended (431, another status, dropped).
* ``slowloris``: 64 connections each sending one header line every 10 s (reopened when
  dropped) for ``--seconds``, while a scraper fetches /metrics once a second (2 s timeout).
  Prints the scrapes that succeeded. ``--auth``: basic auth on the endpoint (the scraper sends
  it, the attacker does not need it: the head comes first); ``--tls``: TLS with a client CA (the
  attacker holds a valid client certificate, the worst case); ``--probe``: attack
  ``e6observe probe``'s endpoint instead of the application's.

Not part of ``./run bench``: an attack, not a cost measurement. About 1-2 minutes per run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
import attacks  # noqa: E402
from helpers import free_port, make_pki  # noqa: E402

AUTH = "scraper:attack-test-password"


class Target:
    """The simulator plus the process under attack; its JSON lines collected by a thread."""

    def __init__(self, args: argparse.Namespace, env_extra: dict[str, str]) -> None:
        py = sys.executable
        self.sim = subprocess.Popen(
            [py, os.path.join(HERE, "simproc.py")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.sim.stdout is not None
        self.sim_port = json.loads(self.sim.stdout.readline())["port"]
        self.port = free_port()
        env = dict(os.environ, **env_extra)
        if args.probe:
            env.update(E6DATA_USERNAME="probe@example.com", E6DATA_PASSWORD="probe-password")
            cmd = [
                py,
                "-m",
                "e6observe",
                "probe",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.sim_port),
                "--metrics-port",
                str(self.port),
                "--interval",
                "1",
            ]
            if "E6OBSERVE_TLS_CERTFILE" in env:
                cmd += [
                    "--metrics-tls-cert",
                    env.pop("E6OBSERVE_TLS_CERTFILE"),
                    "--metrics-tls-key",
                    env.pop("E6OBSERVE_TLS_KEYFILE"),
                    "--metrics-client-ca",
                    env.pop("E6OBSERVE_TLS_CLIENT_CAFILE"),
                ]
        else:
            cmd = [
                py,
                os.path.join(HERE, "attack_app.py"),
                "--sim-port",
                str(self.sim_port),
                "--metrics-port",
                str(self.port),
                "--seconds",
                str(args.app_seconds),
            ]
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self.lines: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()
        end = time.monotonic() + 30
        while time.monotonic() < end:  # the endpoint answers (any status) once it listens
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                pass

    def close(self) -> None:
        for p in (self.proc,):
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        try:
            assert self.sim.stdin is not None
            self.sim.stdin.write('{"cmd": "quit"}\n')
            self.sim.stdin.flush()
            self.sim.wait(10)
        except Exception:
            self.sim.kill()


def flood(args: argparse.Namespace) -> dict[str, Any]:
    t = Target(args, {})
    try:
        time.sleep(8)  # warm up: the connector's sessions, the first scrapes
        stop = threading.Event()
        rss = attacks.sampled(lambda: (time.monotonic(), attacks.rss_mib(t.proc.pid)), stop, 0.1, 600)
        time.sleep(3)
        n_before = len(t.lines)
        t_attack = time.monotonic()
        ends = []
        for r in range(args.rounds):
            ends.append(
                attacks.header_flood(t.port, connections=64, lines=98, line_bytes=65_000, deadline=60)
            )
            if r + 1 < args.rounds:
                time.sleep(5)
        t_end = time.monotonic()
        n_during = len(t.lines)
        time.sleep(10.5)
        after = attacks.rss_mib(t.proc.pid)
        time.sleep(20)  # 456s show up later, if at all
        stop.set()
        before_rss = statistics.median(v for ts, v in rss if ts < t_attack)
        peak = max(v for ts, v in rss if t_attack <= ts <= t_end + 10)
        lines = t.lines
        q_before = [x["queries"] for x in lines[2:n_before] if "queries" in x]
        q_during = [x["queries"] for x in lines[n_before : n_during + 1] if "queries" in x]
        out = {
            "rss_before_mib": round(before_rss, 1),
            "rss_peak_mib": round(peak, 1),
            "rss_10s_after_mib": round(after, 1),
            "rise_mib": round(peak - before_rss, 1),
            "left_after_10s_mib": round(after - before_rss, 1),
            "qps_before_median": statistics.median(q_before) if q_before else None,
            "qps_before_min": min(q_before) if q_before else None,  # the A/A noise floor
            "qps_during_min": min(q_during) if q_during else None,
            "qps_during_median": statistics.median(q_during) if q_during else None,
            "e456_before": sum(x.get("e456", 0) for x in lines[:n_before]),
            "e456_during_after": sum(x.get("e456", 0) for x in lines[n_before:]),
            "errors_during_after": sum(x.get("errors", 0) for x in lines[n_before:]),
            "query_map_max": max((x.get("query_map", 0) for x in lines), default=0),
            "requests": ends,
        }
        return out
    finally:
        t.close()


def slowloris(args: argparse.Namespace) -> dict[str, Any]:
    env: dict[str, str] = {}
    ctx = None
    tmp: Optional[str] = None
    if args.auth:
        env["E6OBSERVE_BASIC_AUTH"] = AUTH
    if args.tls:
        tmp = tempfile.mkdtemp(prefix="e6o-attack-")
        c = make_pki(tmp)
        env.update(
            E6OBSERVE_TLS_CERTFILE=c["server_cert"],
            E6OBSERVE_TLS_KEYFILE=c["server_key"],
            E6OBSERVE_TLS_CLIENT_CAFILE=c["ca"],
        )
        ctx = attacks.client_context(c["ca"], c["client_cert"], c["client_key"])
    t = Target(args, env)
    try:
        time.sleep(5)
        auth = AUTH if args.auth else None

        def scrape() -> bool:
            status, body = attacks.http_get(t.port, "/metrics", ctx=ctx, auth=auth, timeout=2.0)
            return status == 200 and b"# HELP" in body

        warm = attacks.scrape_loop(scrape, 3, 1.0)
        with attacks.Slowloris(
            t.port, connections=64, interval=10.0, ctx=ctx, max_seconds=args.seconds + 30
        ) as atk:
            time.sleep(2)  # every attack connection open
            t0 = time.monotonic()
            results: list[bool] = []
            while time.monotonic() - t0 < args.seconds:
                results.append(scrape())
                time.sleep(max(0.0, 1.0 - (time.monotonic() - t0) % 1.0))
            reconnects = atk.reconnects
        return {
            "variant": ("probe " if args.probe else "")
            + ("tls+client-ca " if args.tls else "")
            + ("basic-auth" if args.auth else "plain" if not args.tls else ""),
            "warm_scrapes_ok": sum(warm),
            "scrapes": len(results),
            "ok": sum(results),
            "success": round(sum(results) / max(1, len(results)), 3),
            "attacker_reconnects": reconnects,
        }
    finally:
        t.close()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("attack", choices=("flood", "slowloris"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--auth", action="store_true")
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--probe", action="store_true")
    args = ap.parse_args()
    args.app_seconds = 300
    out = flood(args) if args.attack == "flood" else slowloris(args)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
