"""Start and stop in fresh processes: what ``import e6observe; e6observe.instrument()`` adds to an
application that has imported the connector, and what ``uninstrument()`` takes with the
/metrics endpoint running.

    .venv/bin/python benchmarks/startup.py [--rounds 8] [--json out.json]

Each round starts one fresh Python process per configuration, in a fresh random order:

* ``connector``      - ``import e6data_python_connector.e6data_grpc`` only (its import time and
  RSS, for context);
* ``default``        - then ``import e6observe; e6observe.instrument(prometheus_port=0)`` (the
  endpoint on a free port, OpenTelemetry on through the global API, the watcher);
* ``prometheus``     - the same with ``otel=False``.

In the instrumented processes: wall time of the import and ``instrument()`` together, RSS after
them less RSS after the connector's import (``/proc/self/statm``, no psutil in the child), one
scrape of /metrics and the RSS after it (what the first scrape adds: prometheus_client's
exposition and the collectors' first run; reported, not a target), then the wall time of
``uninstrument()``. The package is byte-compiled first
(as ``pip install`` does), so no child pays the compiler. ``benchmarks/run.py`` runs this as its
``startup`` phase. ``benchmarks/lifecycle.py`` (issue 12) times repeated instrument/uninstrument
cycles in one process with an /events stream open.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from stats import spread  # noqa: E402

CHILD = r"""
import json, os, sys, time
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
t0 = time.perf_counter()
import e6data_python_connector.e6data_grpc  # noqa
t1 = time.perf_counter()
r1 = rss()
out = {"connector_import_ms": (t1 - t0) * 1e3, "rss_after_connector": r1}
cfg = sys.argv[1]
if cfg != "connector":
    kw = {"prometheus_port": 0}
    if cfg == "prometheus":
        kw["otel"] = False
    t2 = time.perf_counter()
    import e6observe
    e6observe.instrument(**kw)
    t3 = time.perf_counter()
    r2 = rss()
    from e6observe import _api
    srv = next(o.server for c, o, _ in _api._active.sinks if c == "sink.prometheus")
    import urllib.request
    body = urllib.request.urlopen(srv.url + "/metrics", timeout=5).read()
    r3 = rss()
    t4 = time.perf_counter()
    e6observe.uninstrument()
    t5 = time.perf_counter()
    out.update(instrument_ms=(t3 - t2) * 1e3, rss_added=r2 - r1, scrape_bytes=len(body),
               rss_after_scrape=r3 - r1, uninstrument_ms=(t5 - t4) * 1e3)
print(json.dumps(out))
"""

CONFIGS = ("connector", "default", "prometheus")


def compile_package() -> None:
    import compileall

    import e6observe

    compileall.compile_dir(os.path.dirname(os.path.abspath(e6observe.__file__ or "")), quiet=1)


def one(cfg: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONHASHSEED="0")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    p = subprocess.run(
        [sys.executable, "-c", CHILD, cfg], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env
    )
    if p.returncode != 0:
        raise RuntimeError(f"{cfg}: exit {p.returncode}: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run(rounds: int, seed: int = 1) -> dict[str, Any]:
    compile_package()
    rng = random.Random(seed)
    raw: dict[str, list[dict[str, Any]]] = {c: [] for c in CONFIGS}
    for c in CONFIGS:  # one untimed process each: the page cache holds every file afterwards
        one(c)
    for _ in range(rounds):
        order = list(CONFIGS)
        rng.shuffle(order)
        for c in order:
            raw[c].append(one(c))
    out: dict[str, Any] = {
        "rounds": rounds,
        "connector_import_ms": spread([r["connector_import_ms"] for r in raw["connector"]]),
        "connector_rss_mib": spread([r["rss_after_connector"] / 2**20 for r in raw["connector"]]),
        "configs": {},
    }
    for c in CONFIGS[1:]:
        rs = raw[c]
        out["configs"][c] = {
            "instrument_ms": spread([r["instrument_ms"] for r in rs]),
            "rss_added_mib": spread([r["rss_added"] / 2**20 for r in rs]),
            "rss_after_scrape_mib": spread([r["rss_after_scrape"] / 2**20 for r in rs]),
            "uninstrument_ms": spread([r["uninstrument_ms"] for r in rs]),
            "raw": rs,
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="write the result here")
    a = ap.parse_args()
    r = run(a.rounds, a.seed)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=1)
    ci, cr = r["connector_import_ms"], r["connector_rss_mib"]
    print(f"connector import: {ci['median']:.1f} ms, RSS {cr['median']:.1f} MiB")
    for c, e in r["configs"].items():
        i, m, u = e["instrument_ms"], e["rss_added_mib"], e["uninstrument_ms"]
        s = e["rss_after_scrape_mib"]
        print(
            f"{c:<11} import+instrument {i['median']:6.1f} ms [{i['min']:.1f}-{i['max']:.1f}]  "
            f"RSS +{m['median']:.2f} MiB (+{s['median']:.2f} after the first scrape)  "
            f"uninstrument {u['median']:6.1f} ms [{u['min']:.1f}-{u['max']:.1f}]"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
