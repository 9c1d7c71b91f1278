"""Markdown tables of the path phases (issue 17) from one or two result files, for BENCHMARKS.md.

    .venv/bin/python benchmarks/paths_table.py AFTER.json [--before BEFORE.json] [--otlp O.json]
        [--otlp-before O0.json]

Each row: the target, the figure (and the earlier run's, if given), the A/A control of the same
run (median and [min-max] over rounds) and the added process CPU per query.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Optional


def _pct(ratio: Optional[float]) -> str:
    return "–" if ratio is None else f"{(ratio - 1) * 100:+.2f} %"


def _aa(entry: dict[str, Any]) -> str:
    rt = (entry or {}).get("ratio_to_bare")
    if not rt:
        return "–"
    sp = rt["spread"]
    return f"{_pct(rt['median'])} [{_pct(sp['min'])} … {_pct(sp['max'])}]"


def _ratio(entry: dict[str, Any]) -> Optional[float]:
    rt = (entry or {}).get("ratio_to_bare")
    return None if not rt else float(rt["median"])


def rows_large(r: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    out = {}
    for name, v in r.get("large", {}).get("variants", {}).items():
        full, ctl = v.get("e6o-full", {}), v.get("bare-ctl", {})
        cpu = full.get("cpu", {}).get("added_pct")
        th = full.get("thread_cpu", {}).get("added_pct")
        cpu_s = "–" if cpu is None else f"{cpu:+.2f} % (A/A {_aa(ctl.get('cpu', {}))})"
        if th is not None:  # runs since 2026-12-04 also record the querying thread's CPU
            cpu_s += f"; querying thread {th:+.2f} % (A/A {_aa(ctl.get('thread_cpu', {}))})"
        out[f"large {name}"] = (
            f"{_pct(_ratio(full))} ({v['bare']['median_ms']:.0f} ms bare)",
            _aa(ctl),
            cpu_s,
        )
    return out


def rows_tp(r: dict[str, Any], phase: str) -> dict[str, tuple[str, str, str]]:
    out = {}
    for name, v in r.get(phase, {}).get("variants", {}).items():
        full, ctl = v.get("e6o-full", {}), v.get("bare-ctl", {})
        cpu = full.get("cpu", {}).get("added_pct")
        cpu_s = "–" if cpu is None else f"{cpu:+.2f} % (A/A {_aa(ctl.get('cpu', {}))})"
        out[f"{phase} {name}: median latency"] = (
            f"{_pct(_ratio(full.get('latency', {})))} ({v['bare']['latency']['median_ms']:.2f} ms bare)",
            _aa(ctl.get("latency", {})),
            cpu_s,
        )
        tp = _ratio(full.get("throughput", {}))
        out[f"{phase} {name}: throughput ratio"] = (
            "–" if tp is None else f"{tp:.3f} ({v['bare']['throughput']['qps']:.0f} q/s bare)",
            _aa(ctl.get("throughput", {})).replace(" %", " % q/s"),
            "",
        )
    return out


def rows_otlp(r: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    lat = r.get("latency", {}).get("modes", {})
    if "e6o-otlp" not in lat:
        return {}
    ctl = lat.get("bare-ctl", {})
    e = lat["e6o-otlp"]
    o = lat.get("otel-otlp", {})
    cpu = e.get("added_thread_cpu_us_per_query", {}).get("median")
    out = {
        "OTLP on: e6o-otlp median latency": (
            f"{_pct(_ratio(e))} ({lat['bare']['median_ms']:.2f} ms bare)",
            _aa(ctl),
            "–" if cpu is None else f"{cpu:+.1f} µs thread CPU per query",
        )
    }
    if o:
        fr = None
        if _ratio(o) and _ratio(o) > 1 and _ratio(e) is not None:
            fr = (_ratio(e) - 1) / (_ratio(o) - 1)  # type: ignore[operator]
        out["OTLP on: e6o-otlp added / otel-otlp added"] = (
            "–" if fr is None else f"{fr:.3f} (otel-otlp {_pct(_ratio(o))})",
            "",
            "",
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("after")
    ap.add_argument("--before")
    ap.add_argument("--otlp")
    ap.add_argument("--otlp-before")
    a = ap.parse_args()
    load = lambda p: json.load(open(p)) if p else {}  # noqa: E731
    after, before = load(a.after), load(a.before)
    oa, ob = load(a.otlp), load(a.otlp_before)
    rows_a = {**rows_large(after), **rows_tp(after, "async"), **rows_tp(after, "pool"), **rows_otlp(oa)}
    rows_b = {**rows_large(before), **rows_tp(before, "async"), **rows_tp(before, "pool"), **rows_otlp(ob)}
    print(
        "| path | e6o-full vs bare (after) | A/A (after), median [min … max] | added CPU (after) "
        "| before (pre-merge branch) |"
    )
    print("|---|---|---|---|---|")
    for k, (fig, aa, cpu) in rows_a.items():
        b = rows_b.get(k, ("–", "", ""))[0]
        print(f"| {k} | {fig} | {aa} | {cpu} | {b} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
