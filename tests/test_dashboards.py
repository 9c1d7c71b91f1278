"""The committed dashboards: regenerated without a diff, and shaped the way Grafana needs them.

Whether every panel's query returns data is proven against a real Prometheus in
``tests/live/test_live_prometheus.py``; this file checks the JSON itself.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from helpers import unavailable

ROOT = Path(__file__).resolve().parent.parent
REGEN = ROOT / "scripts" / "regen-dashboards"
JSON_DIR = ROOT / "dashboards" / "json"
CHART_FILES = ROOT / "helm" / "e6observe" / "files"
OVERVIEW = JSON_DIR / "e6data-blue-green-overview.json"
RUNTIME = JSON_DIR / "e6data-client-runtime.json"
SELECTOR = 'cluster=~"$cluster", namespace=~"$namespace", job=~"$job", instance=~"$instance", pod=~"$pod"'
POPULATION = 'cluster=~"$cluster", namespace=~"$namespace", job=~"$job"'


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def panels(d: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in d["panels"]:
        yield p
        yield from p.get("panels", [])


def exprs(panel: dict[str, Any]) -> list[str]:
    return [t["expr"] for t in panel.get("targets", [])]


def by_title(d: dict[str, Any], title: str) -> dict[str, Any]:
    found = [p for p in panels(d) if p.get("title") == title]
    assert len(found) == 1, f"{title!r}: {len(found)} panels"
    return found[0]


def regen(*args: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(REGEN), *args], capture_output=True, text=True, timeout=120)
    if r.returncode == 2 and "no Python with grafana-foundation-sdk" in r.stderr:
        unavailable(r.stderr.strip() + " (./run test builds .venv-tools)")
    return r


# --- generation ---------------------------------------------------------------------------
def test_regenerating_produces_no_diff() -> None:
    r = regen("--check")
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_check_names_a_drifted_or_missing_file(tmp_path: Path) -> None:
    for rel in ("dashboards/json", "dashboards/rules", "helm/e6observe/files", "e6observe/mixin"):
        shutil.copytree(ROOT / rel, tmp_path / rel)
    assert regen("--check", "--root", str(tmp_path)).returncode == 0

    copy = tmp_path / "helm/e6observe/files/dashboards/e6data-client-runtime.json"
    copy.write_text(
        copy.read_text(encoding="utf-8").replace("Client runtime", "Client runtim"), encoding="utf-8"
    )
    (tmp_path / "helm/e6observe/files/rules/e6observe.rules.yaml").unlink()
    r = regen("--check", "--root", str(tmp_path))
    assert r.returncode == 1
    assert "helm/e6observe/files/dashboards/e6data-client-runtime.json" in r.stderr
    assert "helm/e6observe/files/rules/e6observe.rules.yaml" in r.stderr
    assert "dashboards/json/e6data-client-runtime.json\n" not in r.stderr

    # Without --check the same command repairs the tree.
    assert regen("--root", str(tmp_path)).returncode == 0
    assert regen("--check", "--root", str(tmp_path)).returncode == 0


def test_the_chart_carries_byte_equal_copies() -> None:
    for src in JSON_DIR.glob("*.json"):
        assert (CHART_FILES / "dashboards" / src.name).read_bytes() == src.read_bytes()
    rules = ROOT / "dashboards/rules/e6observe.rules.yaml"
    assert (CHART_FILES / "rules" / rules.name).read_bytes() == rules.read_bytes()


# --- shape ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path, uid, title",
    [
        (OVERVIEW, "e6data-blue-green-overview", "e6data / Blue-green overview"),
        (RUNTIME, "e6data-client-runtime", "e6data / Client runtime"),
    ],
)
def test_stable_uid_title_and_variables(path: Path, uid: str, title: str) -> None:
    d = load(path)
    assert (d["uid"], d["title"]) == (uid, title)
    assert d.get("id") is None  # Grafana assigns ids; a fixed one would clash on import
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance", "pod"):
        v = variables[name]
        assert v["type"] == "query" and v["includeAll"] and v["multi"]
        assert v["allValue"] == ".*"  # "All" must also match series without the label (pod)
        assert v["datasource"]["uid"] == "${datasource}"
        assert v["query"]["query"].startswith("label_values(e6observe_build_info")


@pytest.mark.parametrize("path", [OVERVIEW, RUNTIME], ids=lambda p: p.name)
def test_every_query_uses_the_datasource_variable_and_the_selectors(path: Path) -> None:
    d = load(path)
    ids = [p["id"] for p in panels(d)]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) and i > 0 for i in ids)
    queried = [p for p in panels(d) if p["type"] != "row"]
    assert queried
    for p in queried:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        assert p.get("description"), p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
            # Every selector in the query is narrowed by the job/instance/pod variables, or by
            # the population ones (per-population recordings: tests/test_dashboards_fleet.py).
            assert t["expr"].count("{") == t["expr"].count("{" + POPULATION), (p["title"], t["expr"])
    refs = [[t["refId"] for t in p["targets"]] for p in queried]
    assert all(len(r) == len(set(r)) for r in refs)


def test_overview_answers_the_blue_green_questions() -> None:
    d = load(OVERVIEW)
    active = by_title(d, "Active strategy per client")
    assert active["type"] == "state-timeline"
    # One code per client, from the recording rule the panel reads (e6observe/mixin/records.py).
    records = {
        r["record"]: r["expr"]
        for g in yaml.safe_load((ROOT / "dashboards/rules/e6observe.records.yaml").read_text())["groups"]
        for r in g["rules"]
    }
    assert exprs(active)[0].startswith("client:e6data_strategy_active:code{")
    assert "by (cluster, namespace, job, instance, pod)" in records["client:e6data_strategy_active:code"]
    texts = {o["text"] for m in active["fieldConfig"]["defaults"]["mappings"] for o in m["options"].values()}
    assert texts == {"none", "blue", "green", "invalid"}

    annotation = [a for a in d["annotations"]["list"] if a["name"] == "Strategy switches"]
    assert annotation and "e6data_strategy_switches_total" in annotation[0]["expr"]
    assert annotation[0]["titleFormat"] == "{{from}} → {{to}} ({{cause}})"

    assert any("e6data_strategy_switch_drain_seconds" in e for e in exprs(by_title(d, "Drain time")))
    assert any("e6data_strategy_pending" in e for e in exprs(by_title(d, "Pending switches")))
    assert any(
        "e6data_strategy_mismatches_total" in e for e in exprs(by_title(d, "Strategy mismatches (456)"))
    )
    assert 'outcome="switch_interrupted"' in exprs(by_title(d, "Queries failed mid-switch"))[0]
    for title in ("Query rate", "Query failures", "Query latency"):
        assert all("strategy" in e.split("(")[1] or "by (strategy" in e for e in exprs(by_title(d, title))), (
            title
        )
    latency = exprs(by_title(d, "Query latency"))
    assert [e.split(",")[0] for e in latency] == [f"histogram_quantile({q}" for q in ("0.5", "0.95", "0.99")]


def test_runtime_covers_rpcs_process_pools_and_e6observe_health() -> None:
    d = load(RUNTIME)
    heat = by_title(d, "RPC latency: $method")
    assert heat["type"] == "heatmap" and heat["repeat"] == "method"
    assert heat["targets"][0]["format"] == "heatmap"
    assert 'method=~"$method"' in heat["targets"][0]["expr"]
    wanted = {
        "Retries": "e6data_retries_total",
        "Memory": "process_resident_memory_bytes",
        "Garbage collections": "python_gc_collections_total",
        "Threads": "process_threads",
        "Open file descriptors": "process_open_fds",
        "Pool connections": "e6data_pool_connections",
        "Watcher heartbeat age": "e6observe_watcher_last_run_timestamp_seconds",
        "Internal errors": "e6observe_internal_errors_total",
    }
    records = {
        r["record"]: r["expr"]
        for g in yaml.safe_load((ROOT / "dashboards/rules/e6observe.records.yaml").read_text())["groups"]
        for r in g["rules"]
    }

    def read(e: str) -> str:
        """The expression with each recorded series it reads replaced by its rule's expression."""
        return re.sub(r"client:[a-z0-9_]+:[a-z_]+", lambda m: f"({records[m.group(0)]})", e)

    for title, metric in wanted.items():
        assert any(metric in read(e) for e in exprs(by_title(d, title))), title
    # Generic process_* names are joined to e6observe targets, not every exporter's process
    # (in the per-client recording the panel's topk reads).
    for e in exprs(by_title(d, "Memory")):
        assert read(e).count("and on (cluster, namespace, job, instance, pod) e6observe_build_info") == 1
