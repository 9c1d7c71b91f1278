"""Fleet scale (issue 17, item 8): how the Prometheus side behaves at 1 000 instrumented pods.

    .venv/bin/python benchmarks/fleet.py [--pods 1000] [--hours 6] [--step 60] [--low-cardinality]
                                         [--json out.json] [--keep DIR [--reuse [--time-only]]]

1. **Capture.** ``--workers`` real worker processes (the connector, ``e6observe.instrument()``
   with its ``/metrics`` endpoint) query the simulator for ``--capture-seconds``; the simulator
   switches colour every few seconds, alternately announced (graceful drain) and unannounced
   (the clients learn it from a 456 mismatch). Every ``--capture-interval`` seconds the harness
   scrapes each worker's ``/metrics`` over loopback, exactly as Prometheus would.
2. **History.** The scrapes are replayed as ``--pods`` targets over ``--hours`` at one scrape
   per ``--step`` seconds. Pod *p* is a copy of worker ``p % workers``, relabelled (``cluster``,
   ``namespace``, ``job`` = one of ten populations, ``instance``, ``pod``) and started at its own
   offset in the capture: at every step a counter (and every histogram bucket, sum and count)
   advances by the increase the worker showed over one capture interval, a gauge takes the value
   of that scrape. Counters stay monotonic and histograms consistent, and every pod's switches,
   colours and latencies come from real scrapes. An ``up`` series per pod is written too (the
   TargetDown alert reads it). The OpenMetrics text is written in chunks of pods (each under
   ``--chunk-mb``) and each chunk is backfilled at once with ``promtool tsdb
   create-blocks-from openmetrics`` and deleted: disk use stays below the final TSDB plus one
   chunk.
3. **Queries.** A real Prometheus (``/usr/bin/prometheus``, loopback, the generated rule file
   loaded) opens the TSDB. The recording rules are backfilled over the same 6 h with
   ``promtool tsdb create-blocks-from rules`` against it, Prometheus is restarted on the merged
   TSDB, and then every dashboard panel's queries (``$__rate_interval`` and the other Grafana
   variables substituted as Grafana would) are timed as range queries over the dashboard's
   default range (3 h) and over the whole 6 h, and every alert and recording rule expression as
   an instant query at the end of the history (what one rule evaluation costs). Each query runs
   ``--repeat`` times; the median is reported.

Nothing leaves 127.0.0.1. The working directory (``--workdir``, default a temp dir) is removed
at the end unless ``--keep`` names one. Disk: about 0.15 GB of TSDB for the default run plus one
chunk of text (``--chunk-mb``, default 400).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from typing import Any, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)


PROMETHEUS = os.environ.get("E6OBSERVE_PROMETHEUS", "/usr/bin/prometheus")
PROMTOOL = os.environ.get("E6OBSERVE_PROMTOOL", "/usr/bin/promtool")
#: Populations (``job`` values) the pods are spread over; namespaces likewise.
JOBS = 10
NAMESPACES = 4

WORKER = r"""
import json, sys, time, threading
import e6observe
kw = json.loads(sys.argv[3])
e6observe.instrument(prometheus_port=0, **kw)
from e6observe import _api
from e6data_python_connector import e6data_grpc
srv = next(o.server for c, o, _ in _api._active.sinks if c == "sink.prometheus")
print(json.dumps({"url": srv.url}), flush=True)
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
conn = e6data_grpc.Connection(host="127.0.0.1", port=int(sys.argv[1]), username="fleet@example.com",
                              password="pw")
pause = float(sys.argv[2])
cur = conn.cursor()
while not stop.is_set():
    try:
        cur.execute("SELECT 1")
        cur.fetchall()
        cur.clear()
    except Exception:
        cur = conn.cursor()
    stop.wait(pause)
conn.close()
e6observe.uninstrument()
"""

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)(?: \S+)?$")


# --- 1. capture ----------------------------------------------------------------------------------
def parse_exposition(text: str) -> dict[tuple[str, str], float]:
    """``{(name, '{labels}'): value}`` of every sample line (text format 0.0.4)."""
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = _LINE.match(line)
        if m is None:
            raise ValueError(f"unparsable exposition line: {line[:200]!r}")
        out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


def family_types(text: str) -> dict[str, str]:
    return {
        p[2]: p[3]
        for p in (line.split(" ") for line in text.splitlines() if line.startswith("# TYPE "))
        if len(p) >= 4
    }


def capture(
    workers: int,
    seconds: float,
    interval: float,
    options: dict[str, Any],
    query_pause: float = 0.02,
    switch_every: float = 15.0,
) -> dict[str, Any]:
    """Real scrapes of ``workers`` instrumented processes while the simulator switches."""
    from e6observe.sim import Simulator

    sim = Simulator(port=0).start()
    procs: list[subprocess.Popen[str]] = []
    try:
        for _ in range(workers):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", WORKER, str(sim.port), str(query_pause), json.dumps(options)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    cwd=ROOT,
                )
            )
        urls = [json.loads(p.stdout.readline())["url"] for p in procs]  # type: ignore[union-attr]
        scrapes: list[list[dict[tuple[str, str], float]]] = [[] for _ in procs]
        times: list[list[float]] = [[] for _ in procs]
        types: dict[str, str] = {}
        t0 = time.monotonic()
        next_switch, announce, k = t0 + switch_every, True, 0
        while True:
            now = time.monotonic()
            if now >= next_switch:
                sim.flip(announce=announce)
                announce = not announce
                next_switch += switch_every
            for i, url in enumerate(urls):
                with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
                    text = r.read().decode()
                scrapes[i].append(parse_exposition(text))
                times[i].append(time.time())
                if not types:
                    types = family_types(text)
            k += 1
            if now - t0 >= seconds:
                break
            time.sleep(max(0.0, t0 + k * interval - time.monotonic()))
        counters = sim.counters()
    finally:
        for p in procs:
            try:
                p.stdin.close()  # type: ignore[union-attr]
                p.wait(timeout=20)
            except Exception:
                p.kill()
        sim.stop()
    series = [len(s[-1]) for s in scrapes]
    return {
        "scrapes": scrapes,
        "times": times,
        "types": types,
        "series_per_process": series,
        "switches": counters.get("switches"),
        "mismatches": counters.get("mismatches_total"),
    }


def series_breakdown(scrape: dict[tuple[str, str], float]) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, _ in scrape:
        base = re.sub(r"_(bucket|sum|count|total|created)$", "", name)
        out[base] = out.get(base, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


# --- 2. history ----------------------------------------------------------------------------------
_MONOTONIC_SUFFIX = ("_total", "_bucket", "_count", "_sum")


def _kind(name: str, types: dict[str, str]) -> str:
    """``counter`` (monotonic), ``stamp`` (a unix time: replayed as the same age) or ``gauge``."""
    if name.endswith("_timestamp_seconds") or name == "process_start_time_seconds":
        return "stamp"
    for suffix in _MONOTONIC_SUFFIX:
        base = name[: -len(suffix)] if name.endswith(suffix) else None
        if base is not None and types.get(base) in ("counter", "histogram"):
            return "counter"
    if types.get(name) == "counter":
        return "counter"
    return "gauge"


class Template:
    """One worker's scrapes as value tables: per series its kind and its value per scrape."""

    def __init__(
        self, scrapes: list[dict[tuple[str, str], float]], times: list[float], types: dict[str, str]
    ) -> None:
        keys: dict[tuple[str, str], None] = {}
        for s in scrapes:
            keys.update(dict.fromkeys(s))
        self.keys = list(keys)
        self.kinds = [_kind(name, types) for name, _ in self.keys]
        k = len(scrapes)
        self.k = k
        # values[i][j]: series j at scrape i (0 before a series first appeared).
        self.values = [[s.get(key, 0.0) for key in self.keys] for s in scrapes]
        # Counter increase over one capture interval, ending at scrape i (i >= 1); stamps: age.
        self.deltas = [[0.0] * len(self.keys)] + [
            [
                (max(0.0, cur[j] - prev[j]) if cur[j] >= prev[j] else cur[j])
                if self.kinds[j] == "counter"
                else 0.0
                for j in range(len(self.keys))
            ]
            for prev, cur in zip(self.values, self.values[1:])
        ]
        self.ages = [
            [(t - v[j]) if self.kinds[j] == "stamp" else 0.0 for j in range(len(self.keys))]
            for v, t in zip(self.values, times)
        ]


def _target_labels(p: int) -> str:
    job = p % JOBS
    return (
        f'cluster="prod",namespace="ns{p % NAMESPACES}",job="app{job}",'
        f'instance="10.{p // 250}.{p % 250}.{job}:9464",pod="app{job}-{p:04d}"'
    )


def _num(v: float) -> str:
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


class History:
    """The 6 h of ``pods`` targets, produced step by step as OpenMetrics text."""

    def __init__(
        self, templates: list[Template], pods: int, steps: int, step: float, end: float, seed: int = 7
    ) -> None:
        rng = random.Random(seed)
        self.templates, self.pods, self.steps, self.step = templates, pods, steps, step
        self.start = end - (steps - 1) * step
        self.tpl = [templates[p % len(templates)] for p in range(pods)]
        self.offset = [rng.randrange(max(1, t.k - 1)) for t in self.tpl]
        self.prefix: list[list[str]] = []
        self.state: list[list[float]] = []
        for p, t in enumerate(self.tpl):
            extra = _target_labels(p)
            pre = []
            for name, labels in t.keys:
                lab = "{" + extra + "}" if not labels else labels[:-1] + "," + extra + "}"
                pre.append(f"{name}{lab} ")
            pre.append("up{" + extra + "} ")
            self.prefix.append(pre)
            self.state.append(list(t.values[self.offset[p]]))
        self.series = sum(len(pre) for pre in self.prefix)

    def chunk(self, pods: range, steps: range) -> str:
        """Every sample of ``pods`` over ``steps`` (consecutive, continuing each pod's state)."""
        out: list[str] = []
        for p in pods:
            t = self.tpl[p]
            st, kinds, prefix = self.state[p], t.kinds, self.prefix[p]
            up = prefix[-1] + "1"
            cycle = max(1, t.k - 1)
            for step_index in steps:
                ts = self.start + step_index * self.step
                tail = f" {ts:.3f}\n"
                i = (self.offset[p] + step_index) % cycle + 1 if t.k > 1 else 0
                ages = t.ages[i]
                if step_index:
                    d, vals = t.deltas[i], t.values[i]
                    for j, kind in enumerate(kinds):
                        if kind == "counter":
                            st[j] += d[j]
                        elif kind == "stamp":
                            st[j] = ts - ages[j]
                        else:
                            st[j] = vals[j]
                else:
                    for j, kind in enumerate(kinds):
                        if kind == "stamp":
                            st[j] = ts - ages[j]
                out.append("".join([pre + _num(v) + tail for pre, v in zip(prefix, st)]))
                out.append(up + tail)
        return "".join(out)

    def windows(self, block: float = 7200.0) -> list[range]:
        """Step ranges within one TSDB block range each (2 h, aligned as promtool aligns)."""
        out: list[range] = []
        first = 0
        for i in range(1, self.steps + 1):
            if i == self.steps or (
                math.floor((self.start + i * self.step) / block)
                != math.floor((self.start + first * self.step) / block)
            ):
                out.append(range(first, i))
                first = i
        return out


def backfill(history: History, tsdb: str, work: str, chunk_mb: float) -> dict[str, Any]:
    """Write the history in chunks (a group of pods over one 2 h block range, about
    ``chunk_mb`` of text) and backfill each at once with promtool, then delete it.

    A chunk holds one block range so promtool reads it once (it reads its input once per block
    range it spans), and a group of pods over the whole range so each block's index covers
    only that group: per-step chunks of every pod would write the full series index into
    every block (50 MB each at 1 000 pods).
    """
    t0 = time.monotonic()
    text_bytes = 0
    files = 0
    # Two chunk files: promtool reads one while the next is generated.
    running: Optional[tuple[subprocess.Popen[str], str]] = None

    def finish() -> None:
        nonlocal running
        if running is None:
            return
        proc, done = running
        _, err = proc.communicate()
        os.unlink(done)
        running = None
        if proc.returncode != 0:
            raise RuntimeError(f"promtool: {err[-2000:]}")

    per_pod_step = max(1, max(len(pre) for pre in history.prefix)) * 190
    try:
        for steps in history.windows():
            group = max(1, int(chunk_mb * 2**20 / (per_pod_step * len(steps))))
            for first in range(0, history.pods, group):
                path = os.path.join(work, f"chunk{files % 2}.om")
                text = history.chunk(range(first, min(history.pods, first + group)), steps)
                with open(path, "w") as f:
                    f.write(text)
                    f.write("# EOF\n")
                text_bytes += len(text)
                files += 1
                del text
                finish()
                running = (
                    subprocess.Popen(
                        [PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", "-q", path, tsdb],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                        text=True,
                    ),
                    path,
                )
        finish()
    finally:
        if running is not None:
            running[0].kill()
            running[0].wait()
    return {
        "text_bytes": text_bytes,
        "chunks": files,
        "seconds": time.monotonic() - t0,
        "tsdb_bytes": _du(tsdb),
    }


def _du(path: str) -> int:
    total = 0
    for dirpath, _, names in os.walk(path):
        for n in names:
            try:
                total += os.path.getsize(os.path.join(dirpath, n))
            except OSError:
                pass
    return total


# --- 3. Prometheus -------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prometheus:
    """A real Prometheus on loopback over ``tsdb``, scraping nothing, with ``rules`` loaded."""

    def __init__(self, tsdb: str, work: str, rules: list[str], admin: bool = False) -> None:
        self.tsdb, self.work, self.rules, self.admin = tsdb, work, rules, admin
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def __enter__(self) -> Prometheus:
        cfg = os.path.join(self.work, "prometheus.yml")
        with open(cfg, "w") as f:
            json.dump(
                {"global": {"evaluation_interval": "1m"}, "rule_files": self.rules, "scrape_configs": []}, f
            )
        log = open(os.path.join(self.work, "prometheus.log"), "ab")
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={self.tsdb}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=30d",
                "--query.max-samples=500000000",
                "--query.timeout=5m",
                "--log.level=warn",
                *(["--web.enable-admin-api"] if self.admin else []),
            ],
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.proc.returncode}; see {log.name}")
            time.sleep(0.5)
        raise RuntimeError("prometheus not ready in 300 s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def api(self, path: str, **params: Any) -> Any:
        url = f"{self.url}/api/v1/{path}?" + urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(url, timeout=600) as r:
            doc = json.loads(r.read())
        if doc.get("status") != "success":
            raise RuntimeError(f"{path}: {doc}")
        return doc["data"]

    def delete_recorded(self) -> None:
        """Delete every recorded series (``level:metric:op`` names) and rewrite the blocks
        without them (admin API): a reused history whose earlier rule blocks were compacted into
        it would otherwise keep the previous run's recordings next to the new ones."""
        for path, params in (
            ("admin/tsdb/delete_series", {"match[]": '{__name__=~".+:.+"}'}),
            ("admin/tsdb/clean_tombstones", {}),
        ):
            url = f"{self.url}/api/v1/{path}?" + urllib.parse.urlencode(params)
            req = urllib.request.Request(url, method="POST")
            with urllib.request.urlopen(req, timeout=900) as r:
                if r.status not in (200, 204):
                    raise RuntimeError(f"{path}: HTTP {r.status}")

    def timed(self, path: str, repeat: int, **params: Any) -> tuple[float, list[float], Any]:
        times, data = [], None
        for _ in range(repeat):
            t = time.perf_counter()
            data = self.api(path, **params)
            times.append(time.perf_counter() - t)
        return sorted(times)[len(times) // 2], times, data

    def blocks(self) -> int:
        return sum(1 for n in os.listdir(self.tsdb) if len(n) == 26 and n.isalnum())

    def wait_compacted(self, target: int, timeout: float) -> dict[str, Any]:
        """Wait until Prometheus' own compactor has merged the backfilled blocks (overlapping:
        one per pod group and block range) down to ``target`` blocks, as a long-running server
        would have them; at most ``timeout`` seconds."""
        t0 = time.monotonic()
        before = self.blocks()
        n = before
        while n > target and time.monotonic() - t0 < timeout:
            time.sleep(10)
            n = self.blocks()
        return {
            "blocks_before": before,
            "blocks_after": n,
            "seconds": time.monotonic() - t0,
            "complete": n <= target,
        }


# --- dashboard and rule queries ------------------------------------------------------------------
def dashboard_queries(step: float, range_s: float, folder: str) -> list[dict[str, Any]]:
    """Every panel target, annotation and variable query of the generated dashboards, with the
    Grafana variables substituted as Grafana would at ``step`` (= scrape interval) and every
    template variable on All."""
    scrape = f"{int(step)}s"
    subs = {
        "$__rate_interval": f"{int(4 * step)}s",
        "$__range": f"{int(range_s)}s",
        "$__interval": scrape,
        "${datasource}": "",
    }
    out: list[dict[str, Any]] = []
    for fname in sorted(os.listdir(folder)):
        with open(os.path.join(folder, fname)) as f:
            doc = json.load(f)
        board = doc.get("title", fname)

        def sub(expr: str) -> str:
            for k, v in subs.items():
                expr = expr.replace(k, v)
            return re.sub(r"\$[a-z_]+", ".*", expr)

        for v in doc.get("templating", {}).get("list", []):
            q = v.get("query")
            if isinstance(q, dict) and "query" in q:
                m = re.match(r"label_values\((.*), (\w+)\)$", q["query"])
                if m:
                    out.append(
                        {
                            "board": board,
                            "panel": f"variable {v['name']}",
                            "kind": "labels",
                            "label": m.group(2),
                            "match": sub(m.group(1)),
                        }
                    )
        for a in doc.get("annotations", {}).get("list", []):
            if a.get("expr"):
                out.append(
                    {
                        "board": board,
                        "panel": f"annotation {a.get('name')}",
                        "kind": "range",
                        "expr": sub(a["expr"]),
                    }
                )
        for p in doc.get("panels", []):
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append(
                        {
                            "board": board,
                            "panel": p.get("title", "?"),
                            "ref": t.get("refId"),
                            "kind": "instant" if t.get("instant") else "range",
                            "expr": sub(t["expr"]),
                        }
                    )
    return out


def rule_queries(files: list[str]) -> list[dict[str, Any]]:
    import yaml

    out = []
    for path in files:
        with open(path) as f:
            doc = yaml.safe_load(f)
        for g in doc["groups"]:
            for r in g["rules"]:
                out.append(
                    {
                        "group": g["name"],
                        "name": r.get("alert") or r.get("record"),
                        "kind": "alert" if "alert" in r else "record",
                        "expr": r["expr"],
                    }
                )
    return out


def time_queries(
    prom: Prometheus,
    end: float,
    ranges: list[float],
    step: float,
    repeat: int,
    dashboards: str,
    rules: list[str],
) -> dict[str, Any]:
    dash_out: list[dict[str, Any]] = []
    for range_s in ranges:
        for q in dashboard_queries(step, range_s, dashboards):
            start = end - range_s
            if q["kind"] == "labels":
                med, times, data = prom.timed(
                    f"label/{q['label']}/values",
                    repeat,
                    **{"match[]": q["match"], "start": start, "end": end},
                )
                n = len(data)
            elif q["kind"] == "instant":
                med, times, data = prom.timed("query", repeat, query=q["expr"], time=end)
                n = len(data["result"])
            else:
                med, times, data = prom.timed(
                    "query_range", repeat, query=q["expr"], start=start, end=end, step=step
                )
                n = len(data["result"])
            dash_out.append({**q, "range_s": range_s, "median_s": med, "times_s": times, "result_series": n})
    rules_out = []
    for q in rule_queries(rules):
        med, times, data = prom.timed("query", repeat, query=q["expr"], time=end)
        rules_out.append({**q, "median_s": med, "times_s": times, "result_series": len(data["result"])})
    return {"dashboards": dash_out, "rules": rules_out}


def backfill_rules(
    prom: Prometheus, rules: list[str], start: float, end: float, step: float, tsdb: str, work: str
) -> dict[str, Any]:
    """Evaluate the recording rules over the history (``promtool tsdb create-blocks-from
    rules``) and move the blocks into the TSDB; Prometheus must be restarted to load them."""
    out_dir = os.path.join(work, "rule-blocks")
    shutil.rmtree(out_dir, ignore_errors=True)
    t = time.monotonic()
    p = subprocess.run(
        [
            PROMTOOL,
            "tsdb",
            "create-blocks-from",
            "rules",
            f"--start={int(start)}",
            f"--end={int(end)}",
            f"--url={prom.url}",
            f"--output-dir={out_dir}",
            f"--eval-interval={int(step)}s",
            *rules,
        ],
        capture_output=True,
        text=True,
        cwd=work,
    )
    if p.returncode != 0:
        raise RuntimeError(f"promtool rules: {p.stderr[-2000:]}")
    names = sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []
    for n in names:
        shutil.move(os.path.join(out_dir, n), os.path.join(tsdb, n))
    shutil.rmtree(out_dir, ignore_errors=True)
    return {"seconds": time.monotonic() - t, "blocks": len(names), "names": names}


def run(a: argparse.Namespace) -> dict[str, Any]:
    options = {"prometheus_low_cardinality": True} if a.low_cardinality else {}
    work = a.keep or tempfile.mkdtemp(prefix="e6o-fleet-")
    os.makedirs(work, exist_ok=True)
    tsdb = os.path.join(work, "tsdb")
    result: dict[str, Any] = {
        "pods": a.pods,
        "hours": a.hours,
        "step_s": a.step,
        "workers": a.workers,
        "low_cardinality": a.low_cardinality,
    }
    stage1 = os.path.join(work, "history.json")
    try:
        if a.reuse and os.path.exists(stage1):
            with open(stage1) as f:
                saved = json.load(f)
            result.update(saved["result"])
            start, end = saved["start"], saved["end"]
            if not a.time_only:
                for n in saved.get("rule_blocks", []):  # the previous run's recording rules
                    shutil.rmtree(os.path.join(tsdb, n), ignore_errors=True)
            print(f"reusing the history in {tsdb}", flush=True)
        else:
            t = time.monotonic()
            cap = capture(a.workers, a.capture_seconds, a.capture_interval, options)
            result["capture"] = {
                "seconds": time.monotonic() - t,
                "scrapes": len(cap["scrapes"][0]),
                "series_per_process": cap["series_per_process"],
                "switches": cap["switches"],
                "mismatches": cap["mismatches"],
                "breakdown": series_breakdown(cap["scrapes"][0][-1]),
            }
            print(
                f"capture: {cap['series_per_process']} series per process, "
                f"{cap['switches']} switches, {cap['mismatches']} mismatches",
                flush=True,
            )
            templates = [Template(s, ts, cap["types"]) for s, ts in zip(cap["scrapes"], cap["times"])]
            steps = int(a.hours * 3600 / a.step) + 1
            end = math.floor(time.time() / 60) * 60 - 120
            hist = History(templates, a.pods, steps, a.step, end)
            start = hist.start
            result["series_total"] = hist.series
            bf = backfill(hist, tsdb, work, a.chunk_mb)
            result["backfill"] = bf
            print(
                f"backfill: {hist.series} series x {steps} steps, "
                f"{bf['text_bytes'] / 2**30:.2f} GiB of text in {bf['chunks']} chunks, "
                f"{bf['seconds']:.0f} s, TSDB "
                f"{bf['tsdb_bytes'] / 2**20:.0f} MiB",
                flush=True,
            )
            with open(stage1, "w") as f:
                json.dump(
                    {
                        "result": {k: result[k] for k in ("capture", "series_total", "backfill")},
                        "start": start,
                        "end": end,
                    },
                    f,
                )
        rules = a.rules
        result["dashboards"], result["rule_files"] = a.dashboards, rules
        recording = [r for r in rules if any(q["kind"] == "record" for q in rule_queries([r]))]
        with Prometheus(tsdb, work, rules, admin=a.reuse) as prom:
            windows = math.ceil(a.hours * 3600 / 7200) + 1
            result["compaction"] = prom.wait_compacted(windows, a.compact_wait)
            print(f"compaction: {result['compaction']}", flush=True)
            if a.reuse and recording and not a.time_only:
                t = time.monotonic()
                prom.delete_recorded()
                result["recordings_deleted_s"] = time.monotonic() - t
                print(f"deleted the previous recordings: {result['recordings_deleted_s']:.0f} s", flush=True)
            if recording and not a.time_only:
                result["rule_backfill"] = backfill_rules(prom, recording, start, end, a.step, tsdb, work)
                with open(stage1) as f:
                    saved = json.load(f)
                saved["rule_blocks"] = result["rule_backfill"]["names"]
                with open(stage1, "w") as f:
                    json.dump(saved, f)
        with Prometheus(tsdb, work, rules) as prom:
            if result.get("rule_backfill", {}).get("blocks"):
                # The recording rules' blocks overlap the history's: let Prometheus merge them
                # too, so no compaction runs while the queries are timed.
                result["compaction_rules"] = prom.wait_compacted(windows, a.compact_wait)
                print(f"compaction after the rule backfill: {result['compaction_rules']}", flush=True)
            result["blocks"] = prom.blocks()
            n = prom.api("query", query='count({__name__=~".+", __name__!~".*:.*", pod!=""})', time=end)
            result["series_in_prometheus"] = int(float(n["result"][0]["value"][1]))
            ranges = [r * 3600 for r in a.ranges]
            result["queries"] = time_queries(prom, end, ranges, a.step, a.repeat, a.dashboards, rules)
        result["disk_peak_bytes"] = _du(work)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return result


def summary(r: dict[str, Any]) -> str:
    lines = [
        f"pods {r['pods']}, {r['hours']} h at {r['step_s']} s, series per process "
        f"{r['capture']['series_per_process']}, series in Prometheus "
        f"{r.get('series_in_prometheus')}, blocks {r.get('blocks')}"
    ]
    q = r.get("queries", {})
    for d in q.get("dashboards", []):
        flag = "SLOW" if d["median_s"] >= 1.0 else "ok"
        lines.append(
            f"  {flag:4} {d['median_s'] * 1e3:8.1f} ms  {d['range_s'] / 3600:.0f}h "
            f"{d['board'][:26]:26} {d['panel'][:40]:40} {d.get('ref') or ''} "
            f"({d['result_series']} series)"
        )
    for d in q.get("rules", []):
        flag = "SLOW" if d["median_s"] >= 1.0 else "ok"
        lines.append(
            f"  {flag:4} {d['median_s'] * 1e3:8.1f} ms  {d['kind']:6} {d['name']} "
            f"({d['result_series']} series)"
        )
    return "\n".join(lines)


def _key(d: dict[str, Any]) -> tuple[Any, ...]:
    return (d.get("board"), d.get("panel"), d.get("ref"), d.get("range_s"), d.get("name"))


def table(runs: list[dict[str, Any]], names: list[str]) -> str:
    """Markdown: every dashboard query (3 h and 6 h) and rule, median and min-max of the
    repeats, one column per run (e.g. before and after the recording rules)."""
    head = "| query | range | " + " | ".join(f"{n}: median ms [min-max]" for n in names) + " |"
    out = [head, "|" + "---|" * (2 + len(names))]
    rows: dict[tuple[Any, ...], list[Optional[dict[str, Any]]]] = {}
    order: list[tuple[Any, ...]] = []
    for i, r in enumerate(runs):
        for d in r["queries"]["dashboards"]:
            k = ("d", d["board"], d["panel"], d.get("ref"), d["range_s"])
            if k not in rows:
                rows[k] = [None] * len(runs)
                order.append(k)
            rows[k][i] = d
        for d in r["queries"]["rules"]:
            k = ("r", d["kind"], d["name"], None, None)
            if k not in rows:
                rows[k] = [None] * len(runs)
                order.append(k)
            rows[k][i] = d

    def cell(d: Optional[dict[str, Any]]) -> str:
        if d is None:
            return "-"
        t = d["times_s"]
        flag = " **≥ 1 s**" if d["median_s"] >= 1.0 else ""
        return f"{d['median_s'] * 1e3:.0f} [{min(t) * 1e3:.0f}-{max(t) * 1e3:.0f}]{flag}"

    for k in order:
        if k[0] == "d":
            name = f"{k[1].split('/')[-1].strip()}: {k[2]}" + (f" ({k[3]})" if k[3] else "")
            rng = f"{k[4] / 3600:.0f} h"
        else:
            name, rng = f"{k[1]} {k[2]}", "instant"
        out.append(f"| {name} | {rng} | " + " | ".join(cell(d) for d in rows[k]) + " |")
    return "\n".join(out)


def plot(runs: list[dict[str, Any]], names: list[str], path: str) -> None:
    """Per dashboard query (3 h range): median time of each run, log scale, 1 s marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys: list[tuple[Any, ...]] = []
    for r in runs:
        for d in r["queries"]["dashboards"]:
            k = (d["panel"], d.get("ref"))
            if d["range_s"] == 3 * 3600 and k not in keys:
                keys.append(k)
    fig, ax = plt.subplots(figsize=(12, max(6.0, 0.22 * len(keys))))
    height = 0.8 / len(runs)
    for i, (r, n) in enumerate(zip(runs, names)):
        got = {
            (d["panel"], d.get("ref")): d["median_s"]
            for d in r["queries"]["dashboards"]
            if d["range_s"] == 3 * 3600
        }
        ys = [j + i * height for j in range(len(keys))]
        ax.barh(ys, [got.get(k, 0.0) for k in keys], height=height, label=n)
    ax.axvline(1.0, color="red", linestyle="--", linewidth=1, label="1 s")
    ax.set_xscale("log")
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(keys))])
    ax.set_yticklabels([f"{p} {ref or ''}" for p, ref in keys], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("median seconds per query (3 h range, 1 000 pods)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--hours", type=float, default=6.0)
    ap.add_argument("--step", type=float, default=60.0, help="scrape interval of the history (s)")
    ap.add_argument("--workers", type=int, default=4, help="real instrumented processes captured")
    ap.add_argument("--capture-seconds", type=float, default=60.0)
    ap.add_argument("--capture-interval", type=float, default=1.0)
    ap.add_argument("--chunk-mb", type=float, default=400.0)
    ap.add_argument(
        "--ranges",
        type=lambda s: [float(x) for x in s.split(",")],
        default=[3.0, 6.0],
        help="dashboard time ranges to time, hours (default 3,6)",
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--compact-wait",
        type=float,
        default=1200.0,
        help="seconds to wait for Prometheus to compact the backfilled blocks",
    )
    ap.add_argument(
        "--low-cardinality", action="store_true", help="the workers run with prometheus_low_cardinality=True"
    )
    ap.add_argument("--keep", help="work directory to keep (TSDB, logs); default: a temp dir, removed")
    rules_dir = os.path.join(ROOT, "dashboards", "rules")
    ap.add_argument(
        "--dashboards",
        default=os.path.join(ROOT, "dashboards", "json"),
        help="folder of the dashboard JSON files whose queries are timed",
    )
    ap.add_argument(
        "--rules",
        type=lambda s: s.split(","),
        default=[os.path.join(rules_dir, n) for n in sorted(os.listdir(rules_dir)) if n.endswith(".yaml")],
        help="rule files loaded, backfilled (recording rules) and timed",
    )
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="with --keep: reuse the history already backfilled there (only the "
        "recording rules are backfilled again and the queries timed)",
    )
    ap.add_argument(
        "--time-only",
        action="store_true",
        help="with --reuse: only time the queries (the recording rules already backfilled there "
        "by the previous run, unchanged since; e.g. to time again on a quieter machine)",
    )
    ap.add_argument("--json", help="write the result here")
    ap.add_argument(
        "--table",
        nargs="+",
        metavar="NAME=RESULT.json",
        help="print the markdown table of earlier results (and --plot PNG); no run",
    )
    ap.add_argument("--plot", help="with --table: write a PNG of the 3 h dashboard query times")
    a = ap.parse_args()
    if a.time_only and not a.reuse:
        ap.error("--time-only needs --keep DIR --reuse (a history and its recording rules)")
    if a.table:
        names, runs = [], []
        for item in a.table:
            n, _, path = item.partition("=")
            names.append(n)
            with open(path) as f:
                runs.append(json.load(f))
        print(table(runs, names))
        if a.plot:
            plot(runs, names, a.plot)
        return 0
    if not (os.access(PROMETHEUS, os.X_OK) and os.access(PROMTOOL, os.X_OK)):
        print(f"fleet: needs {PROMETHEUS} and {PROMTOOL} (apt-get install prometheus)", file=sys.stderr)
        return 2
    r = run(a)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=1)
    print(summary(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
