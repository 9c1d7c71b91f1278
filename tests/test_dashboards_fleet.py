"""The committed dashboards stay legible and cheap at fleet scale (issue 17, item 8).

At 1 000 pods a panel that draws one line per client returned 1 000 to 3 000 series per
refresh and took over a second (BENCHMARKS.md, "Fleet scale"). These checks read the generated
JSON: per-client targets are bounded by ``topk(Config.top_clients, ...)``, the switch annotation
is one per population, and the panels fed by per-population recordings are narrowed by the
population variables only (so a chosen pod shows its population, not "No data"). That the
queries return data is ``tests/live/test_live_prometheus.py``; how fast they are at 1 000 pods
is ``benchmarks/fleet.py``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import yaml

from e6observe.mixin import queries as Q
from e6observe.mixin.config import DEFAULT

ROOT = Path(__file__).resolve().parent.parent
JSON_DIR = ROOT / "dashboards" / "json"
OVERVIEW = JSON_DIR / "e6data-blue-green-overview.json"
#: Per-client targets that stay unbounded, and why: one code per client from a recording rule
#: (a state timeline is a row per client by design; 0.3 s at 1 000 pods over 6 h), and the
#: versions table (one instant query).
UNBOUNDED = {"Active strategy per client", "Versions"}
SELECTOR = "{" + Q.DASHBOARD_SELECTOR
POPULATION = "{" + Q.POPULATION_SELECTOR + "}"


def targets() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(JSON_DIR.glob("*.json")):
        for p in json.loads(path.read_text(encoding="utf-8"))["panels"]:
            for t in p.get("targets", []):
                yield p["title"], t


def per_client(t: dict[str, Any]) -> bool:
    """A target that draws one line per client: its legend names the pod (or it is a table)."""
    return "{{pod}}" in t.get("legendFormat", "") or t.get("format") == "table"


def test_every_per_client_target_draws_at_most_top_clients() -> None:
    bounded = [(title, t) for title, t in targets() if per_client(t) and title not in UNBOUNDED]
    assert len(bounded) >= 20  # every process, connection and e6observe-health panel
    for title, t in bounded:
        assert t["expr"].startswith(f"topk({DEFAULT.top_clients}, "), (title, t["expr"])
        assert t["expr"].endswith(")"), (title, t["expr"])
    # The exceptions are still what the list says they are.
    left = {title for title, t in targets() if per_client(t) and not t["expr"].startswith("topk(")}
    assert left == UNBOUNDED


def test_the_switch_annotation_is_one_per_population_and_switch() -> None:
    d = json.loads(OVERVIEW.read_text(encoding="utf-8"))
    (ann,) = [a for a in d["annotations"]["list"] if a["name"] == "Strategy switches"]
    by = re.findall(r"by \(([^)]*)\)", ann["expr"])
    assert by == [f"{Q.POPULATION}, from, to, cause"]
    assert "instance" not in ann["tagKeys"] and "pod" not in ann["tagKeys"]
    assert ann["textFormat"] == "{{cluster}} {{namespace}} {{job}}"


def test_population_recordings_are_narrowed_by_the_population_variables_only() -> None:
    # A job: recording has no instance or pod label: pod=~"<one pod>" would match nothing.
    seen = 0
    for title, t in targets():
        for name, matchers in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})", t["expr"]):
            if name.startswith("job:"):
                seen += 1
                assert matchers.startswith(POPULATION[:-1]) and "$pod" not in matchers, (title, name)
                assert "$instance" not in matchers, (title, name)
            elif name == "e6data_strategy_mismatches_total" and "job:" in t["expr"]:
                # The share's numerator must cover the same clients as its recorded denominator.
                assert matchers == POPULATION, (title, t["expr"])
            else:
                assert matchers.startswith(SELECTOR), (title, name, matchers)
    assert seen >= 8  # query latency x3, heatmap, RPC p95, mismatch share, drain x2, resume


def test_the_per_client_recordings_keep_every_variable_label() -> None:
    # A chosen pod must narrow what a topk panel reads: each client: recording keeps the five
    # variable labels, and the one the panels read for process_* stays joined to e6observe.
    records = {
        r["record"]: r["expr"]
        for g in yaml.safe_load((ROOT / "dashboards/rules/e6observe.records.yaml").read_text())["groups"]
        for r in g["rules"]
    }
    read = set()
    for _title, t in targets():
        read |= set(re.findall(r"\bclient:[a-z0-9_]+:[a-z_]+", t["expr"]))
    assert len(read) >= 18
    for name in read:
        assert f"by ({Q.CLIENT}" in records[name], name
        if name.startswith(("client:process_", "client:python_")):
            assert records[name].endswith(f"and on ({Q.CLIENT}) e6observe_build_info"), name
