"""Every metric a dashboard or alert queries must be one e6observe exports.

The names are parsed out of the PromQL of every dashboard panel, annotation and template
variable and of every alert rule, and compared with ``e6observe.metrics.exposed_series_names()``.
A renamed or dropped metric therefore fails here instead of leaving an empty panel or an alert
that can never fire.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from e6observe.metrics import exposed_series_names

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = sorted((ROOT / "dashboards" / "json").glob("*.json"))
RULES = ROOT / "dashboards" / "rules" / "e6observe.rules.yaml"
#: The recording rules (e6observe/mixin/records.py): dashboards may read the series they write.
RECORDS = ROOT / "dashboards" / "rules" / "e6observe.records.yaml"
#: Series Prometheus itself writes for every scrape target (not exported by e6observe).
PROMETHEUS_SERIES = frozenset({"up"})

# PromQL words that look like identifiers but are not metric names.
KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "atan2",
        "inf",
        "nan",
        "start",
        "end",
    }
)
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)", re.I)
STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
TOKEN = re.compile(
    r"(?P<num>0x[0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])*)"
    r"|(?P<var>\$\{[^}]*\}|\$\w+)"
    r"|(?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r"|(?P<brace>\{[^{}]*\})"
    r"|(?P<range>\[[^\[\]]*\])"
    r"|(?P<other>.)",
    re.S,
)
NAME_MATCHER = re.compile(r'__name__\s*=\s*"([^"]+)"')
LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$", re.S)


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: bare identifiers that are not functions, keywords,
    label names (inside ``{}`` or grouping clauses), numbers, durations or variables."""
    m = LABEL_VALUES.match(expr)
    if m:  # Grafana's variable query: label_values(<series selector>, <label>)
        expr = m.group(1)
    names: set[str] = set()
    # Exact-name matchers inside braces: {__name__="x"}.
    for brace in re.findall(r"\{[^{}]*\}", expr):
        names.update(NAME_MATCHER.findall(brace))
    text = STRINGS.sub('""', expr)
    text = GROUPING.sub(" ", text)  # drop by/without/on/ignoring/group_* and their label lists
    tokens = [(t.lastgroup, t.group()) for t in TOKEN.finditer(text)]
    significant = [(k, v) for k, v in tokens if not (k == "other" and v.isspace())]
    for i, (kind, value) in enumerate(significant):
        if kind != "ident" or value.lower() in KEYWORDS:
            continue
        nxt = significant[i + 1][1] if i + 1 < len(significant) else ""
        if nxt == "(":
            continue  # a function or an aggregation operator
        names.add(value)
    return names


def dashboard_exprs(data: Any) -> Iterator[tuple[str, str]]:
    """(where, expr) for every panel target, annotation and template-variable query."""

    def walk(node: Any, where: str) -> Iterator[tuple[str, str]]:
        if isinstance(node, dict):
            title = node.get("title") or node.get("name") or where
            for k, v in node.items():
                if k == "expr" and isinstance(v, str):
                    yield f"{title}.expr", v
                elif k == "query" and node.get("type") == "query":
                    q = v.get("query") if isinstance(v, dict) else v
                    if isinstance(q, str):
                        yield f"variable {node.get('name')}", q
                else:
                    yield from walk(v, title)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item, where)

    yield from walk(data, data.get("title", "?"))


def rule_exprs(rules: Any) -> Iterator[tuple[str, str]]:
    for group in rules["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert") or rule.get("record"), rule["expr"]


def recorded_names() -> set[str]:
    rules = yaml.safe_load(RECORDS.read_text(encoding="utf-8"))
    return {r["record"] for g in rules["groups"] for r in g["rules"]}


def unknown(exprs: Iterator[tuple[str, str]], recorded: frozenset[str] = frozenset()) -> dict[str, set[str]]:
    allowed = exposed_series_names() | PROMETHEUS_SERIES | recorded
    out: dict[str, set[str]] = {}
    for where, expr in exprs:
        bad = metric_names(expr) - allowed
        if bad:
            out[where] = bad
    return out


# --- the parser -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "expr, expected",
    [
        (
            'sum by (job, le) (rate(foo_bucket{le="1", job=~"a|b"}[5m])) / on (job) group_left(version) '
            "bar_info offset 1h > bool 3",
            {"foo_bucket", "bar_info"},
        ),
        ('{__name__="baz_total", job="x"}', {"baz_total"}),
        ("up == 0 and on (job, instance) max_over_time(qux[1h:1m])", {"up", "qux"}),
        ('label_replace(m1, "dst", "$1", "src", "(some_label.*)")', {"m1"}),
        ("1e3 * m2 + 0x1F - .5 + 2.5e-3", {"m2"}),
        ("sum without(pod)(m3) > Inf or m4 @ start()", {"m3", "m4"}),
        ('histogram_quantile(0.99, sum by (le) (rate(x_bucket{a="$job"}[$__rate_interval])))', {"x_bucket"}),
        ('time() - ns:metric:rate5m{job=~"$job"}', {"ns:metric:rate5m"}),
        ("count by (strategy) (s == 1) unless ignoring(strategy) t", {"s", "t"}),
        ('label_values(e6observe_build_info{job=~"$job"}, instance)', {"e6observe_build_info"}),
        ("vector(0) or nan", set()),
        ("max_over_time(m5[30m:1m] offset 5m)", {"m5"}),
    ],
)
def test_metric_names_are_parsed_out_of_promql(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


def test_an_unknown_metric_is_reported_with_where_it_is_used() -> None:
    exprs = [
        ("Panel A.expr", "sum(rate(e6data_strategy_switches_total[5m])) + e6data_flips_total"),
        ("Panel B.expr", "e6data_strategy_active"),
    ]
    assert unknown(iter(exprs)) == {"Panel A.expr": {"e6data_flips_total"}}


# --- the contract ---------------------------------------------------------------------------
def test_the_generated_files_exist() -> None:
    assert [p.name for p in DASHBOARDS] == ["e6data-blue-green-overview.json", "e6data-client-runtime.json"]
    assert RULES.is_file()


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_dashboard_query_names_an_exported_metric(path: Path) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    exprs = list(dashboard_exprs(data))
    assert len(exprs) >= 15, "the walk found too few queries to be looking at the right fields"
    assert unknown(iter(exprs), frozenset(recorded_names())) == {}
    # Each query names at least one metric (no constant-only panels).
    assert all(metric_names(e) for _, e in exprs), [w for w, e in exprs if not metric_names(e)]


def test_every_alert_names_an_exported_metric() -> None:
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    exprs = list(rule_exprs(rules))
    assert len(exprs) >= 10
    assert unknown(iter(exprs)) == {}
    assert all(metric_names(e) for _, e in exprs)


def test_every_recording_rule_reads_exported_metrics() -> None:
    rules = yaml.safe_load(RECORDS.read_text(encoding="utf-8"))
    exprs = list(rule_exprs(rules))
    assert len(exprs) >= 4
    assert unknown(iter(exprs)) == {}  # read raw series only, never another recording
    assert all(metric_names(e) for _, e in exprs)


def test_the_dashboards_read_only_recorded_series_that_exist() -> None:
    used: set[str] = set()
    for path in DASHBOARDS:
        for _, e in dashboard_exprs(json.loads(path.read_text(encoding="utf-8"))):
            used |= metric_names(e)
    recorded = {n for n in used if ":" in n}
    assert recorded and recorded <= recorded_names()


def test_the_dashboards_use_the_core_blue_green_metrics() -> None:
    used: set[str] = set()
    for path in DASHBOARDS:
        for _, e in dashboard_exprs(json.loads(path.read_text(encoding="utf-8"))):
            used |= metric_names(e)
    # A metric read through a recording rule the dashboards read counts as used.
    records = yaml.safe_load(RECORDS.read_text(encoding="utf-8"))
    for group in records["groups"]:
        for rule in group["rules"]:
            if rule["record"] in used:
                used |= metric_names(rule["expr"])
    for name in (
        "e6data_strategy_active",
        "e6data_strategy_switches_total",
        "e6data_strategy_pending",
        "e6data_strategy_mismatches_total",
        "e6data_strategy_switch_drain_seconds_bucket",
        "e6data_query_duration_seconds_bucket",
        "e6data_query_duration_seconds_count",
        "e6data_rpc_duration_seconds_bucket",
        "e6data_retries_total",
        "process_resident_memory_bytes",
        "python_gc_collections_total",
        "process_threads",
        "process_open_fds",
        "e6data_pool_connections",
        "e6observe_watcher_last_run_timestamp_seconds",
        "e6observe_internal_errors_total",
    ):
        assert name in used, name
