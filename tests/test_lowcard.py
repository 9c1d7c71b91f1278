"""``prometheus_low_cardinality``: the reduced exposition for large fleets (issue 17, item 8).

One real instrumented process goes through an unannounced switch (learned from a 456) and an
announced one; its low-cardinality scrape must stay within 60 series, keep the series the
switch, mismatch and latency-per-colour panels read, and sum every dropped label exactly (the
totals equal the full registry's, read in the same process).
"""

from __future__ import annotations

import re
import urllib.request
from collections import defaultdict
from typing import Any, Callable

from helpers import endpoint, scrape
from prometheus_client.exposition import generate_latest

import e6observe
from e6observe import _api
from e6observe.sim import Simulator

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            m = _LINE.match(line)
            assert m, line
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            out.append((m.group(1), labels, float(m.group(3))))
    return out


def totals(ss: list[tuple[str, dict[str, str], float]], by: tuple[str, ...] = ()) -> dict[Any, float]:
    out: dict[Any, float] = defaultdict(float)
    for name, labels, value in ss:
        out[(name,) + tuple(labels.get(k, "") for k in by)] += value
    return dict(out)


def query(conn: Any) -> None:
    cur = conn.cursor()
    cur.execute("SELECT 1")
    cur.fetchall()
    cur.clear()


def test_low_cardinality_scrape(sim: Simulator, connect: Callable[..., Any]) -> None:
    e6observe.instrument(prometheus_port=0, otel=False, prometheus_low_cardinality=True)
    try:
        conn = connect()
        for _ in range(5):
            query(conn)
        sim.flip(announce=False)  # the client learns it from a 456: a mismatch switch
        for _ in range(5):
            query(conn)
        sim.flip(announce=True)  # announced: a graceful switch
        for _ in range(5):
            query(conn)
        low = samples(scrape())
        sink = next(o for c, o, _ in _api._active.sinks if c == "sink.prometheus")  # type: ignore[union-attr]
        full = samples(generate_latest(sink.registry).decode())
        with urllib.request.urlopen(endpoint() + "/metrics?name[]=e6data_strategy_active", timeout=10) as r:
            restricted = samples(r.read().decode())
    finally:
        e6observe.uninstrument()

    assert len(low) <= 60 < len(full)
    names = {n for n, _, _ in low}
    # Latency per colour: buckets by strategy and le only.
    buckets = [lab for n, lab, _ in low if n == "e6data_query_duration_seconds_bucket"]
    assert buckets and all(set(lab) == {"strategy", "le"} for lab in buckets)
    assert {lab["strategy"] for lab in buckets} == {"blue", "green"}
    # Switches by cause (both kinds happened), mismatches per colour, the active colour.
    causes = {lab["cause"] for n, lab, _ in low if n == "e6data_strategy_switches_total"}
    assert {"mismatch", "announced"} <= causes
    assert all(set(lab) == {"strategy"} for n, lab, _ in low if n == "e6data_strategy_mismatches_total")
    assert {
        "e6data_strategy_active",
        "e6data_strategy_mismatches_total",
        "e6data_rpc_duration_seconds_count",
        "e6observe_build_info",
    } <= names
    assert not any(
        n.startswith(("e6data_rpc_duration_seconds_bucket", "python_gc_", "e6data_cluster_resume"))
        for n in names
    )
    # Nothing lost in the sums: totals per colour equal the full registry's.
    for name in (
        "e6data_rpc_duration_seconds_count",
        "e6data_strategy_mismatches_total",
        "e6data_query_duration_seconds_count",
        "e6data_rpc_duration_seconds_sum",
    ):
        lo = totals([s for s in low if s[0] == name], ("strategy",))
        fu = totals([s for s in full if s[0] == name], ("strategy",))
        assert lo == fu and sum(lo.values()) > 0, name
    lo = totals([s for s in low if s[0] == "e6data_query_duration_seconds_bucket"], ("strategy", "le"))
    fu = totals([s for s in full if s[0] == "e6data_query_duration_seconds_bucket"], ("strategy", "le"))
    assert lo == fu
    # ?name[]= still restricts, and restricted output is reduced too.
    assert {n for n, _, _ in restricted} == {"e6data_strategy_active"}
    assert all(set(lab) == {"strategy"} for _, lab, _ in restricted)
