"""The alert rules: valid for Prometheus, unit-tested with promtool, documented, configurable.

promtool comes with Debian's ``prometheus`` package (``./run test`` installs it on CI).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import need_binary

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # dashboards/ is a source tree, not an installed package
    sys.path.insert(0, str(ROOT))

from test_metric_contract import metric_names  # noqa: E402

from e6observe.mixin import alerts as A  # noqa: E402
from e6observe.mixin.config import DEFAULT, Config, ConfigError, duration_seconds  # noqa: E402

RULES = ROOT / "dashboards" / "rules" / "e6observe.rules.yaml"
RULE_TESTS = ROOT / "dashboards" / "rules" / "tests" / "e6observe.rules.test.yaml"
RUNBOOK = ROOT / "docs" / "runbook.md"
ALERTS_DOC = ROOT / "docs" / "alerts.md"


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    exe = need_binary("promtool", install="apt-get install prometheus (./run test does this as root)")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [r for g in data["groups"] for r in g["rules"]]


# --- promtool -------------------------------------------------------------------------------
def test_promtool_check_rules() -> None:
    r = promtool("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(rules())} rules found" in r.stdout


def test_promtool_unit_tests_pass() -> None:
    r = promtool("test", "rules", str(RULE_TESTS))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_every_alert_has_a_not_yet_case_and_a_firing_case_with_labels_and_annotations() -> None:
    cases = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    quiet: set[str] = set()
    firing: set[str] = set()
    for t in cases["tests"]:
        for c in t.get("alert_rule_test", []):
            if not c.get("exp_alerts"):
                quiet.add(c["alertname"])
                continue
            for exp in c["exp_alerts"]:
                # Exact labels and every annotation, not just "something fired".
                assert "severity" in exp["exp_labels"], c
                assert set(exp["exp_annotations"]) == {"summary", "description", "runbook_url"}, c
            firing.add(c["alertname"])
    names = {r["alert"] for r in rules()}
    assert quiet == names and firing == names


def test_the_unit_tests_bind_the_thresholds_of_the_config(tmp_path: Path) -> None:
    # Rules generated with other thresholds and windows must fail the same unit tests: the
    # tests check the configured values, not merely that an expression parses.
    changed = DEFAULT.with_(
        flapping_threshold=4, split_brain_for="20m", mismatch_ratio=0.2, pending_stuck_seconds=900
    )
    (tmp_path / "e6observe.rules.yaml").write_text(A.render_rules(changed), encoding="utf-8")
    (tmp_path / "tests").mkdir()
    shutil.copy(RULE_TESTS, tmp_path / "tests" / RULE_TESTS.name)
    r = promtool("test", "rules", str(tmp_path / "tests" / RULE_TESTS.name))
    assert r.returncode != 0
    for name in (
        "E6dataStrategyFlapping",
        "E6dataStrategySplitBrain",
        "E6dataStrategyMismatchRateHigh",
        "E6dataStrategySwitchStuckPending",
    ):
        assert f"alertname: {name}," in r.stdout + r.stderr, name


# --- content --------------------------------------------------------------------------------
def test_every_rule_has_for_severity_summary_description_and_runbook() -> None:
    headings = {
        re.sub(r"[^a-z0-9-]", "", h.strip().lower().replace(" ", "-"))
        for h in re.findall(r"^#+ (.+)$", RUNBOOK.read_text(encoding="utf-8"), re.M)
    }
    seen = set()
    for r in rules():
        assert re.match(r"^E6(data|observe)[A-Z][A-Za-z]+$", r["alert"])
        duration_seconds(r["for"])
        assert r["labels"]["severity"] in ("critical", "warning", "info")
        ann = r["annotations"]
        assert ann["summary"] and "\n" not in ann["summary"]
        assert "{{" in ann["description"], f"{r['alert']}: description is not templated"
        base, _, anchor = ann["runbook_url"].partition("#")
        assert base == DEFAULT.runbook_url and anchor == r["alert"].lower()
        assert anchor in headings, f"docs/runbook.md has no section for {r['alert']}"
        seen.add(r["alert"])
    assert len(seen) == len(rules())
    severities = {r["labels"]["severity"] for r in rules()}
    assert severities == {"critical", "warning", "info"}


def test_the_required_alerts_exist_with_their_severity() -> None:
    sev = {r["alert"]: r["labels"]["severity"] for r in rules()}
    assert sev["E6dataStrategySwitched"] == "info"
    assert sev["E6dataStrategySplitBrain"] == "critical"
    for name in (
        "E6dataStrategyFlapping",
        "E6dataStrategySwitchStuckPending",
        "E6dataStrategyMismatchRateHigh",
        "E6dataQueriesFailedMidSwitch",
        "E6dataQueryLatencyHigh",
        "E6dataQueryErrorRateHigh",
        "E6observeMemoryGrowth",
        "E6dataQueryMapLeak",
        "E6observeTargetDown",
        "E6observeWatcherStalled",
    ):
        assert name in sev


def test_flapping_counts_switches_with_increase_and_split_brain_counts_colours() -> None:
    exprs = {r["alert"]: r["expr"] for r in rules()}
    assert "increase(e6data_strategy_switches_total[15m])" in exprs["E6dataStrategyFlapping"]
    assert exprs["E6dataStrategyFlapping"].endswith(">= 3")
    assert exprs["E6dataStrategySplitBrain"] == (
        "count by (cluster, namespace, job) (count by (cluster, namespace, job, strategy) "
        '(e6data_strategy_active{strategy=~"blue|green"} == 1)) > 1'
    )
    assert exprs["E6dataStrategyMismatchRateHigh"].endswith("> 0.05")


def test_docs_name_every_alert_and_every_config_field() -> None:
    doc = ALERTS_DOC.read_text(encoding="utf-8")
    for r in rules():
        assert f"`{r['alert']}`" in doc, r["alert"]
    for field in Config.__dataclass_fields__:
        assert f"`{field}`" in doc, f"docs/alerts.md does not document Config.{field}"


# --- configuration --------------------------------------------------------------------------
def test_the_selector_reaches_every_metric_of_every_alert() -> None:
    cfg = DEFAULT.with_(selector='job="orders"', population_labels=("namespace", "job"))
    data = A.rule_groups(cfg)
    for r in data["groups"][0]["rules"]:
        for name in metric_names(r["expr"]):
            uses = re.findall(re.escape(name) + r"(\{[^}]*\}|\b)", r["expr"])
            assert uses and all('job="orders"' in u for u in uses), (r["alert"], name)
    split = next(r for r in data["groups"][0]["rules"] if r["alert"] == "E6dataStrategySplitBrain")
    assert split["expr"].startswith(
        "count by (cluster, namespace, job) (count by (cluster, namespace, job, strategy)"
    )


def test_every_alert_aggregation_keeps_namespace_and_the_cluster_label() -> None:
    # kube-prometheus-stack's Alertmanager groups and inhibits on namespace and cluster.
    for cfg in (DEFAULT, DEFAULT.with_(cluster_label="k8s_cluster")):
        for r in A.rule_groups(cfg)["groups"][0]["rules"]:
            clauses = re.findall(r"\b(?:by|on) \(([^)]*)\)", r["expr"])
            assert clauses, r["alert"]
            for clause in clauses:
                labels = [x.strip() for x in clause.split(",")]
                assert labels[:2] == [cfg.cluster_label, "namespace"], (r["alert"], clause)
    with pytest.raises(ConfigError):
        DEFAULT.with_(cluster_label="not a label")


def test_windows_and_thresholds_come_from_the_config() -> None:
    cfg = DEFAULT.with_(
        flapping_window="30m",
        flapping_threshold=5,
        split_brain_for="3m",
        switch_for="1m",
        runbook_url="https://example.test/rb.md",
    )
    got = {r["alert"]: r for r in A.rule_groups(cfg)["groups"][0]["rules"]}
    assert "[30m]" in got["E6dataStrategyFlapping"]["expr"]
    assert got["E6dataStrategyFlapping"]["expr"].endswith(">= 5")
    assert got["E6dataStrategySplitBrain"]["for"] == "3m"
    assert got["E6dataStrategySwitched"]["for"] == "1m"
    assert got["E6dataStrategySwitched"]["annotations"]["runbook_url"] == (
        "https://example.test/rb.md#e6datastrategyswitched"
    )


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"flapping_window": "15 minutes"}, "not a PromQL duration"),
        ({"split_brain_for": ""}, "not a PromQL duration"),
        ({"mismatch_ratio": 5}, "mismatch_ratio must be in (0, 1]"),
        ({"error_ratio": 0}, "error_ratio must be in (0, 1]"),
        ({"pending_stuck_seconds": -1}, "must not be negative"),
        ({"flapping_threshold": 1}, "at least 2"),
        ({"top_clients": 0}, "top_clients must be at least 1"),
        ({"selector": '{job="x"}'}, "without braces"),
        ({"client_labels": ()}, "non-empty tuple of label names"),
        ({"population_labels": ("job", "bad-label")}, "non-empty tuple of label names"),
    ],
)
def test_bad_config_is_a_clear_error(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Config(**changes)


def test_durations_are_parsed() -> None:
    assert duration_seconds("1h30m") == 5400
    assert duration_seconds("0m") == 0
    assert duration_seconds("250ms") == 0.25
