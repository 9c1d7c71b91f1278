"""``e6observe demo``: a blue/green deployment, watched live.

Starts the embedded simulator, instruments the real e6data connector in this process, runs a
concurrent ``SELECT 1`` workload on it, switches the cluster between blue and green every
``--flip-every`` seconds (announced switches, and now and then an abrupt one nobody was told
about), serves /metrics, and shows what e6observe sees: the active strategy, switches by cause,
456 mismatches, latency per strategy, queries per second and queries in flight. It ends with the
timeline of every switch the connector went through.

Everything runs on 127.0.0.1. The workload's password is the simulator's demo credential; it is
never printed.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sys
import textwrap
import threading
import time
from collections import deque
from typing import Any, Optional, TextIO

from .. import metrics as M
from ..endpoint.failure import EXIT_STATUS as ENDPOINT_EXIT
from ..endpoint.failure import catch_endpoint_failure
from . import _argtypes as A

DEMO_USER = "demo@e6observe.invalid"
#: The simulator accepts only this; it must never reach the screen, /metrics or any log.
DEMO_PASSWORD = "demo-password-not-shown"
DEFAULT_METRICS_PORT = 9464
#: Redraws per second of the live view on a terminal; plain lines elsewhere come every
#: PLAIN_EVERY seconds.
REFRESH_HZ = 2.0
PLAIN_EVERY = 5.0
MAX_THREADS = 64
#: Switch events kept for the closing timeline.
TIMELINE_CAP = 1000


# -- arguments --------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's flags."""
    parser.add_argument(
        "--duration",
        type=A.non_negative,
        default=60.0,
        metavar="SECONDS",
        help="how long to run (default 60; 0 = until Ctrl-C)",
    )
    parser.add_argument(
        "--flip-every",
        type=A.positive,
        default=10.0,
        metavar="SECONDS",
        help="seconds between blue/green deployments (default 10)",
    )
    parser.add_argument(
        "--threads",
        type=A.integer(1, MAX_THREADS),
        default=4,
        metavar="N",
        help=f"concurrent workload threads, 1..{MAX_THREADS} (default 4)",
    )
    parser.add_argument(
        "--metrics-port",
        type=A.port,
        default=DEFAULT_METRICS_PORT,
        metavar="PORT",
        help=f"port of /metrics on 127.0.0.1 (default {DEFAULT_METRICS_PORT}; 0 = any free port)",
    )
    parser.add_argument(
        "--latency-ms",
        type=A.non_negative,
        default=1.0,
        metavar="MS",
        help="simulated latency of each RPC in milliseconds (default 1)",
    )
    parser.add_argument(
        "--think-ms",
        type=A.non_negative,
        default=10.0,
        metavar="MS",
        help="mean pause of each workload thread between queries in "
        "milliseconds (default 10). Announced switches apply only when no "
        "query is in flight; with no pause at all they rarely can, and "
        "clients learn of the switch from 456 errors instead",
    )
    parser.add_argument(
        "--abrupt-every",
        type=A.integer(0),
        default=3,
        metavar="N",
        help="make the 2nd deployment and every Nth after it abrupt: no "
        "announcement, clients learn from 456 errors (default 3; 0 = never)",
    )


# -- the workload ------------------------------------------------------------------------------
class Workload:
    """``threads`` connector connections, each running SELECT 1 / fetchall / clear in a loop."""

    def __init__(self, host: str, port: int, threads: int, think_s: float = 0.0) -> None:
        self.host, self.port, self.n = host, port, threads
        self.think_s = think_s
        self.stop = threading.Event()
        self.ok = 0
        #: failure cause (:data:`FAILURE_CAUSES` key, or "<step>: <error>") -> count
        self.failed: dict[str, int] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for i in range(self.n):
            t = threading.Thread(target=self._run, name=f"e6observe-demo-{i}", daemon=True)
            self._threads.append(t)
            t.start()

    def _run(self) -> None:
        from e6data_python_connector import e6data_grpc

        conn: Any = None
        cur: Any = None
        failures = 0  # in a row
        while not self.stop.is_set():
            step = "connect"
            try:
                if conn is None:
                    conn = e6data_grpc.Connection(
                        host=self.host, port=self.port, username=DEMO_USER, password=DEMO_PASSWORD
                    )
                if cur is None:
                    cur = conn.cursor()
                step = "execute"
                cur.execute("SELECT 1")
                step = "fetch"
                cur.fetchall()
                cur.clear()
                failures = 0
                with self._lock:
                    self.ok += 1
                if self.think_s:
                    self.stop.wait(random.uniform(0.0, 2.0 * self.think_s))
            except Exception as exc:  # counted by cause; messages may carry server text
                failures += 1
                cause = failure_cause(step, exc)
                with self._lock:
                    self.failed[cause] = self.failed.get(cause, 0) + 1
                # A cursor caught by an abrupt switch keeps failing: start a new one; if that
                # fails too, a new connection.
                cur = None
                if failures >= 2:
                    conn = _close(conn)
                self.stop.wait(0.05)
        _close(conn)

    def join(self, timeout: float = 10.0) -> None:
        self.stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.ok, sum(self.failed.values())

    def failures(self) -> dict[str, int]:
        with self._lock:
            return dict(self.failed)


#: Why a demo query fails, in the words of the closing summary.
FAILURE_CAUSES = {
    "fetch-456": "456 on fetch: the cluster switched between the query's execute and its fetch "
    "(the connector does not retry fetches)",
    "execute-456": "456 on execute: the cursor's last query id was still pinned to the retired "
    "colour and the connector's re-auth retries ran out (a new cursor works)",
    "connect-456": "456 on connect: a new connection raced the switch",
}


def failure_cause(step: str, exc: BaseException) -> str:
    """A :data:`FAILURE_CAUSES` key for a 456, else ``"<step>: <error type or gRPC code>"``.
    Built from the exception's type and gRPC status only: its text may carry server strings."""
    code = getattr(exc, "code", None)
    details = getattr(exc, "details", None)
    text, name = "", type(exc).__name__
    if callable(code) and callable(details):
        try:
            text = str(details() or "")
            name = str(getattr(code(), "name", name))
        except Exception:
            pass
    if "456" in text:
        return f"{step}-456"
    return f"{step}: {name}"


def _close(conn: Any) -> Any:
    """Close ``conn`` quietly; returns None (the caller's new value for it)."""
    if conn is not None:
        try:
            conn.close()
        except Exception:
            pass
    return None


# -- deployments -------------------------------------------------------------------------------
class Deployer:
    """Switches the simulator every ``every`` seconds: announce, let clients drain, complete.
    The 2nd switch and every ``abrupt_every``-th after it complete with no announcement."""

    def __init__(self, sim: Any, every: float, abrupt_every: int) -> None:
        self.sim = sim
        self.every = every
        self.abrupt_every = abrupt_every
        #: How long an announced switch stays announced before it completes: long enough for
        #: every client to see new_strategy and drain, short against the period.
        self.lead = min(2.0, every * 0.3)
        self.n = 0
        self.announced = 0
        self.abrupt = 0
        self._next = time.monotonic() + every
        self._complete_at: Optional[float] = None

    def tick(self, now: float) -> None:
        if self._complete_at is not None and now >= self._complete_at:
            self._complete_at = None
            self.sim.complete()
            self.announced += 1
        if now < self._next:
            return
        self._next += self.every
        if self._complete_at is not None:  # still announced (very short period): finish it
            return
        self.n += 1
        # The 2nd deployment is abrupt, so that even a short run shows both causes; then every
        # abrupt_every-th after it.
        if self.abrupt_every and self.n >= 2 and (self.n - 2) % self.abrupt_every == 0:
            self.sim.flip(announce=False)
            self.abrupt += 1
        else:
            self.sim.announce()
            self._complete_at = now + self.lead


# -- the view ----------------------------------------------------------------------------------
def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


class View:
    """Reads the recorder (the same store /metrics is rendered from) into a few lines."""

    def __init__(self, recorder: Any, sim: Any, workload: Workload, deployer: Deployer) -> None:
        self.rec, self.sim, self.work, self.dep = recorder, sim, workload, deployer
        self.started = time.monotonic()
        self._rate: deque[tuple[float, int]] = deque(maxlen=8)

    def _queries_total(self) -> int:
        return sum(h.snapshot()[2] for _, h in self.rec.family(M.QUERY_DURATION).items())

    def lines(self, now: float, width: int = 79) -> list[str]:
        """The live view, one reading per line, each at most ``width`` characters: the wide
        form when the terminal has room for it, else a compact one that fits 80 columns."""
        rec = self.rec
        state = rec.state()
        total = self._queries_total()
        self._rate.append((now, total))
        t0, n0 = self._rate[0]
        qps = (total - n0) / (now - t0) if now > t0 else 0.0
        by_cause = dict.fromkeys(M.SWITCH_CAUSES, 0)
        for (_frm, _to, cause), c in rec.family(M.SWITCHES).items():
            by_cause[cause] = by_cause.get(cause, 0) + int(c.value)
        mismatches = int(sum(c.value for _, c in rec.family(M.MISMATCHES).items()))
        ok, failed = self.work.counts()
        pending = state["pending"]
        in_flight = ", ".join(f"{s} {state['in_flight'].get(s, 0)}" for s in M.STRATEGIES)
        causes = ", ".join(f"{cause} {n}" for cause, n in by_cause.items())
        latency = self.latency()
        wide = [
            f"e6observe demo  {now - self.started:6.1f} s   cluster active: {self.sim.active:<5}"
            f"  deployments: {self.dep.announced} announced, {self.dep.abrupt} abrupt",
            f"  connector strategy : {state['active'] or 'none'}"
            + (f" (switch to {pending} pending)" if pending else ""),
            f"  switches           : {sum(by_cause.values())}  ({causes})",
            f"  456 mismatches     : {mismatches}",
            f"  queries            : {ok} ok, {failed} failed   {qps:7.1f} /s   in flight: " + in_flight,
        ]
        for strategy, (p50, p99, mean, n) in latency.items():
            if n:
                wide.append(
                    f"  latency {strategy:<5}      : p50 ~{_ms(p50):>9}  p99 ~{_ms(p99):>9}"
                    f"  mean {_ms(mean):>9}  ({n} queries)"
                )
            else:
                wide.append(f"  latency {strategy:<5}      : -")
        if max(len(line) for line in wide) <= width:
            return wide
        compact = [
            f"demo {now - self.started:5.0f} s  cluster {self.sim.active:<5}  deployments: "
            f"{self.dep.announced} announced, {self.dep.abrupt} abrupt",
            f"  connector  {state['active'] or 'none'}"
            + (f" (switch to {pending} pending)" if pending else ""),
            f"  switches   {sum(by_cause.values())}: {causes}",
            f"  456 errors {mismatches}",
            f"  queries    {ok} ok, {failed} failed, {qps:.0f}/s; in flight {in_flight}",
        ]
        for strategy, (p50, p99, mean, n) in latency.items():
            compact.append(
                f"  {strategy:<5}      p50 ~{_ms(p50)}  p99 ~{_ms(p99)}  mean {_ms(mean)}  ({n} queries)"
                if n
                else f"  {strategy:<5}      -"
            )
        return [line if len(line) <= width else line[: max(1, width - 1)] + "…" for line in compact]

    def plain(self, now: float) -> str:
        """The same readings as one compact line, for logs and pipes."""
        rec = self.rec
        state = rec.state()
        self.lines(now)  # updates the rate window
        (t0, n0), (t1, n1) = self._rate[0], self._rate[-1]
        qps = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
        by_cause = dict.fromkeys(M.SWITCH_CAUSES, 0)
        for (_frm, _to, cause), c in rec.family(M.SWITCHES).items():
            by_cause[cause] = by_cause.get(cause, 0) + int(c.value)
        mismatches = int(sum(c.value for _, c in rec.family(M.MISMATCHES).items()))
        ok, failed = self.work.counts()
        parts = [f"active={state['active'] or 'none'}"]
        if state["pending"]:
            parts.append(f"pending={state['pending']}")
        parts.append(
            f"switches={sum(by_cause.values())} (" + ", ".join(f"{c} {n}" for c, n in by_cause.items()) + ")"
        )
        parts.append(f"mismatches={mismatches}")
        parts.append(f"queries={ok} ok/{failed} failed {qps:.0f}/s")
        parts.append("in_flight=" + ",".join(f"{s}:{state['in_flight'].get(s, 0)}" for s in M.STRATEGIES))
        for strategy, (p50, p99, mean, n) in self.latency().items():
            if n:
                parts.append(
                    f"{strategy} p50/p99/mean={p50 * 1000:.1f}/{p99 * 1000:.1f}/{mean * 1000:.1f} ms"
                )
        return " ".join(parts)

    def latency(self) -> dict[str, tuple[float, float, float, int]]:
        """(p50, p99, mean, count) of query latency per strategy since the start.

        The quantiles are estimated from the bucket counts by linear interpolation, exactly as
        PromQL's ``histogram_quantile`` does on the same buckets, so they match a dashboard and
        are only as fine as the buckets (``db.client.operation.duration``'s recommended ones);
        the mean is exact.
        """
        from ..v1.convert import histogram_quantile, merged_histogram

        children = self.rec.family(M.QUERY_DURATION).items()
        out = {}
        for strategy in M.STRATEGIES:
            counts, total, n = merged_histogram(children, 0, strategy)
            out[strategy] = (
                histogram_quantile(0.5, M.QUERY_DURATION.buckets, counts),
                histogram_quantile(0.99, M.QUERY_DURATION.buckets, counts),
                total / n if n else 0.0,
                n,
            )
        return out


class Screen:
    """Redraws in place on a terminal (ANSI cursor movement); elsewhere prints a plain line
    every PLAIN_EVERY seconds."""

    def __init__(self, out: TextIO, tty: bool) -> None:
        self.out, self.tty = out, tty
        self._drawn = 0
        self._last_plain = time.monotonic()  # the first plain line after PLAIN_EVERY

    def show(self, view: View, now: float) -> None:
        if self.tty:
            # Never wider than the terminal: a wrapped line would throw off the redraw.
            width = max(20, shutil.get_terminal_size().columns - 1)
            lines = view.lines(now, width)
            buf = []
            if self._drawn:
                buf.append(f"\x1b[{self._drawn}F\x1b[J")  # up to the block's start, clear below
            buf.extend(line + "\n" for line in lines)
            self.out.write("".join(buf))
            self._drawn = len(lines)
        elif now - self._last_plain >= PLAIN_EVERY:
            self._last_plain = now
            self.out.write(f"[{time.strftime('%H:%M:%S')}] {view.plain(now)}\n")
        self.out.flush()


def timeline(events: list[Any]) -> list[str]:
    """The closing switch timeline, one line per applied switch."""
    if not events:
        return ["no switches"]
    out = [f"{'time':<12}  {'switch':<14}  {'cause':<9}  {'drain':>8}  pinned"]
    for ev in events:
        stamp = time.strftime("%H:%M:%S", time.localtime(ev.time_unix)) + (
            f".{int(ev.time_unix * 1000) % 1000:03d}"
        )
        drain = f"{ev.drain_seconds:.3f} s" if ev.drain_seconds is not None else "-"
        out.append(
            f"{stamp:<12}  {ev.from_strategy + ' -> ' + ev.to_strategy:<14}  "
            f"{ev.cause:<9}  {drain:>8}  {ev.pinned_queries}"
        )
    return out


def banner(sim: Any, args: argparse.Namespace, base: str) -> list[str]:
    """What runs and where to look: the endpoint's pages and the commands that read them."""
    until = "Ctrl-C to stop" if args.duration == 0 else f"running {args.duration:g} s, Ctrl-C to stop early"
    abrupt = f" (abrupt: the 2nd, then every {_ordinal(args.abrupt_every)})" if args.abrupt_every else ""
    return [
        f"simulated e6data cluster on {sim.host}:{sim.port} (blue/green, {args.latency_ms:g} ms per RPC)",
        f"workload: {args.threads} threads of SELECT 1",
        f"deployments: every {args.flip_every:g} s{abrupt}",
        f"status page: {base}/",
        f"metrics:     {base}/metrics",
        f"events:      {base}/events",
        f"in another terminal:  e6observe status --url {base}",
        f"                      e6observe tail --url {base}",
        f"{until}; latency p50/p99 (~) are estimated from the histogram buckets, as "
        "PromQL's histogram_quantile does",
    ]


def _plural(n: int, word: str, plural: str = "") -> str:
    return f"{n} {word if n == 1 else plural or word + 's'}"


def explain(
    cluster: dict[str, Any], deployer: Deployer, by_cause: dict[str, int], mismatches_seen: int
) -> list[str]:
    """One line for each way the connector's counts differ from the cluster's, saying why."""
    out = []
    announced, abrupt = deployer.announced, deployer.abrupt
    conn_announced = by_cause.get("announced", 0)
    conn_mismatch = by_cause.get("mismatch", 0)
    conn_total = sum(by_cause.values())
    if abrupt:
        them, they = (
            ("it", "it counts as a mismatch switch")
            if abrupt == 1
            else ("them", "they count as mismatch switches")
        )
        out.append(
            f"{_plural(abrupt, 'abrupt deployment')} had no announcement: the connector "
            f"learned of {them} from 456 errors, so {they}."
        )
    through_456 = min(max(0, announced - conn_announced), max(0, conn_mismatch - abrupt))
    if through_456:
        why = (
            "a query id the connector kept after the abrupt switch blocks every later "
            "graceful switch (docs/simulator.md)"
            if abrupt
            else "with no idle moment between queries the connector cannot apply an "
            "announcement (try a longer --think-ms)"
        )
        out.append(
            f"{_plural(through_456, 'announced deployment')} applied through 456 because "
            f"a query was still pinned to the old colour: {why}."
        )
    missing = cluster.get("switches", 0) - conn_total
    if missing > 0:
        out.append(
            f"{_plural(missing, 'deployment')} not seen as a switch by the connector: no "
            "query ran on the new colour before the next deployment or the end."
        )
    elif missing < 0:
        out.append(
            f"the connector counted {_plural(-missing, 'switch', 'switches')} more than the "
            "cluster made: the timeline below shows each one with its cause."
        )
    sent = int(cluster.get("mismatches_total", 0))
    if sent != mismatches_seen:
        out.append(
            f"the cluster sent {sent} 456 errors and e6observe counted {mismatches_seen}: "
            "it counts the 456s that reached the connector's calls it wraps."
        )
    return out


def summary(
    cluster: dict[str, Any],
    deployer: Deployer,
    rec: Any,
    failures: dict[str, int],
    switches: list[Any],
    width: int = 100,
) -> list[str]:
    """The closing lines: the cluster's and the connector's counts, why they differ, failed
    queries by cause, and the switch timeline."""
    by_cause = dict.fromkeys(M.SWITCH_CAUSES, 0)
    for (_frm, _to, cause), c in rec.family(M.SWITCHES).items():
        by_cause[cause] = by_cause.get(cause, 0) + int(c.value)
    seen = int(sum(c.value for _, c in rec.family(M.MISMATCHES).items()))

    def wrap(text: str, indent: str = "", hang: int = 2) -> list[str]:
        return textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=indent + " " * hang) or [
            indent
        ]

    lines = wrap(
        f"cluster: {_plural(cluster.get('switches', 0), 'switch', 'switches')}"
        f" ({deployer.announced} announced, {deployer.abrupt} abrupt), "
        f"{int(cluster.get('mismatches_total', 0))} 456 errors sent"
    )
    lines += wrap(
        f"connector (as e6observe saw it): {sum(by_cause.values())} switches ("
        + ", ".join(f"{c} {n}" for c, n in by_cause.items())
        + f"), {seen} 456 errors"
    )
    for line in explain(cluster, deployer, by_cause, seen):
        lines += wrap(line, "  ")
    total = sum(failures.values())
    lines += wrap(f"failed queries: {total}" + (" (by cause):" if total else ""))
    for cause, n in sorted(failures.items(), key=lambda kv: -kv[1]):
        lines += wrap(f"{n:>5}  {FAILURE_CAUSES.get(cause, cause)}", "  ", hang=7)
    lines.append("switch timeline:")
    lines += ["  " + line for line in timeline(switches)]
    return lines


# -- run ---------------------------------------------------------------------------------------
def _ordinal(n: int) -> str:
    if n == 1:
        return "one"
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _err(msg: str) -> None:
    print(f"e6observe demo: {msg}", file=sys.stderr)


def _metrics_url() -> Optional[str]:
    """The /metrics URL of the live instrumentation's Prometheus endpoint, if it serves one."""
    from .. import _api

    inst = getattr(_api, "_active", None)
    for component, obj, _ in getattr(inst, "sinks", ()):
        server = getattr(obj, "server", None)
        if component == "sink.prometheus" and server is not None and server.running:
            return f"{server.url}/metrics"
    return None


class _Signals:
    """SIGINT/SIGTERM set ``stop``; a second one ends the process the usual way."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.stop.is_set():
            signal.signal(signum, self._old.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt
        self.stop.set()

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def run(args: argparse.Namespace, out: Optional[TextIO] = None, tty: Optional[bool] = None) -> int:
    """Run the demo; returns the exit code (0 on a normal end or a signal)."""
    from .. import _api
    from ..sim import Simulator

    out = out or sys.stdout
    tty = out.isatty() if tty is None else tty
    if _api.is_instrumented():
        _err("this process is already instrumented; run the demo in its own process")
        return 2

    # The status page and OpenTelemetry name the process; unless the user did, call it so.
    os.environ.setdefault("OTEL_SERVICE_NAME", "e6observe-demo")
    sim = Simulator(port=0, latency_ms=args.latency_ms, users={DEMO_USER: DEMO_PASSWORD})
    sim.start()
    stop = threading.Event()
    switches: deque[Any] = deque(maxlen=TIMELINE_CAP)
    work: Optional[Workload] = None
    rec: Any = None

    def on_event(ev: Any) -> None:
        if ev.kind == "applied":
            switches.append(ev)

    try:
        with catch_endpoint_failure() as caught:
            rec = _api.instrument(prometheus_port=args.metrics_port, prometheus_addr="127.0.0.1")
        url = _metrics_url()
        if url is None:
            what = caught.message or f"cannot serve /metrics on 127.0.0.1:{args.metrics_port}"
            _err(f"{what}; choose another --metrics-port (0 = any free port)")
            return ENDPOINT_EXIT
        rec.subscribe(on_event)
        base = url[: -len("/metrics")]
        width = max(40, shutil.get_terminal_size().columns - 1) if tty else 100
        for line in banner(sim, args, base):
            print("\n".join(textwrap.wrap(line, width, subsequent_indent="  ")), file=out)
        out.flush()

        work = Workload(sim.host, sim.port, args.threads, args.think_ms / 1000.0)
        work.start()
        deployer = Deployer(sim, args.flip_every, args.abrupt_every)
        view = View(rec, sim, work, deployer)
        screen = Screen(out, tty)
        deadline = time.monotonic() + args.duration if args.duration > 0 else None
        with _Signals(stop):
            while not stop.is_set():
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                deployer.tick(now)
                screen.show(view, now)
                stop.wait(1.0 / REFRESH_HZ)
        work.join()
        rec.flush()
        if tty:
            screen.show(view, time.monotonic())
        else:  # the last state, whatever the plain-line period
            print(f"[{time.strftime('%H:%M:%S')}] {view.plain(time.monotonic())}", file=out)
        print("", file=out)
        for line in summary(sim.counters(), deployer, rec, work.failures(), list(switches), width):
            print(line, file=out)
        out.flush()
        return 0
    finally:
        if work is not None:
            work.join()
        if rec is not None:
            rec.unsubscribe(on_event)
        _api.uninstrument()
        sim.stop()


__all__ = ["add_arguments", "run", "DEMO_USER", "DEMO_PASSWORD"]
