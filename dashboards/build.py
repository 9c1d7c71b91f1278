"""Build the Grafana dashboards and the rule file, and keep the committed copies in sync.

    python -m dashboards.build            # (re)write every generated file
    python -m dashboards.build --check    # exit 1 and name the files that differ

Dashboards are built with Grafana's ``grafana-foundation-sdk`` (Python >= 3.11); the rule file
with :mod:`e6observe.mixin.alerts`. Both are written to ``dashboards/`` and copied into the Helm
chart (``helm/e6observe/files/``), because Helm reads only files inside a chart.
``scripts/regen-dashboards`` runs this module with an interpreter that has the SDK. Copies for
the wheel go to ``e6observe/mixin/files/`` (see :data:`PACKAGE_SOURCES`; ``e6observe export``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import heatmap, prometheus, statetimeline, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import heatmap as heatmap_model
from grafana_foundation_sdk.models import prometheus as prom_model

from e6observe import metrics as M
from e6observe.mixin import alerts, records
from e6observe.mixin import queries as Q
from e6observe.mixin import records as R
from e6observe.mixin.config import DEFAULT, Config

ROOT = Path(__file__).resolve().parent.parent
TAGS = ["e6data", "e6observe", "blue-green"]
DS = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
SEL = Q.DASHBOARD_SELECTOR
#: The selector of the per-population recordings (no instance or pod label to match).
POP = Q.POPULATION_SELECTOR
RATE = Q.RATE
CLIENT_LEGEND = "{{job}} {{instance}} {{pod}}"
#: What a per-client panel says about the lines it draws (Config.top_clients of them).
TOP_NOTE = (
    " At most {k} clients are drawn at each instant, the highest (all of them when a few "
    "instances or pods are selected); per-client values come from recording rules (rates, "
    "means and increases over {w})."
)


def top(cfg: Config, expr: str) -> str:
    """The ``cfg.top_clients`` highest series of a per-client expression."""
    return Q.top_clients(cfg.top_clients, expr)


def top_note(cfg: Config) -> str:
    return TOP_NOTE.format(k=cfg.top_clients, w=cfg.record_window)


# --- small builders ----------------------------------------------------------------------------
def target(
    expr: str,
    legend: str = "",
    ref: str = "A",
    fmt: str = "time_series",
    instant: bool = False,
    exemplar: bool = False,
) -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DS)
    if exemplar:  # the latency histograms carry trace ids (the query spans') as exemplars
        q = q.exemplar(True)
    q = q.legend_format(legend or "__auto")
    if fmt != "time_series":
        q = q.format(prom_model.PromQueryFormat(fmt))
    return q.instant() if instant else q.range()


def ts(
    title: str,
    description: str,
    targets: Sequence[prometheus.Dataquery],
    unit: str = "short",
    span: int = 12,
    height: int = 8,
    stacked: bool = False,
    bars: bool = False,
) -> timeseries.Panel:
    p = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .span(span)
        .height(height)
        .fill_opacity(10 if not bars else 80)
        .line_width(1)
        .legend(
            cb.VizLegendOptions()
            .show_legend(True)
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .calcs(["lastNotNull", "max"])
        )
        .tooltip(
            cb.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING)
        )
    )
    if bars:
        p = p.draw_style(common.GraphDrawStyle.BARS)
    if stacked:
        p = p.stacking(cb.StackingConfig().mode(common.StackingMode.NORMAL))
    for t in targets:
        p = p.with_target(t)
    return p


def refs(exprs: Sequence[tuple[str, str]], exemplar: bool = False) -> List[prometheus.Dataquery]:
    """Targets A, B, C... from (expr, legend) pairs."""
    return [target(e, legend, chr(ord("A") + i), exemplar=exemplar) for i, (e, legend) in enumerate(exprs)]


def variables(cfg: Config, with_method: bool) -> List[Any]:
    base = Q.gauge(M.BUILD_INFO, cfg.selector)
    in_cluster = Q.gauge(M.BUILD_INFO, cfg.selector, 'cluster=~"$cluster"')
    in_namespace = Q.gauge(M.BUILD_INFO, cfg.selector, 'cluster=~"$cluster"', 'namespace=~"$namespace"')
    out: List[Any] = [
        dash.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        _query_var("cluster", "Cluster", f"label_values({base}, cluster)"),
        _query_var("namespace", "Namespace", f"label_values({in_cluster}, namespace)"),
        _query_var("job", "Job", f"label_values({in_namespace}, job)"),
        _query_var("instance", "Instance", f"label_values({Q.gauge(M.BUILD_INFO, _JOB)}, instance)"),
        _query_var("pod", "Pod", f"label_values({Q.gauge(M.BUILD_INFO, _job_instance())}, pod)"),
    ]
    if with_method:
        count = Q.series(M.RPC_DURATION, "_count", SEL)
        out.append(_query_var("method", "RPC method", f"label_values({count}, method)"))
    return out


_JOB = 'cluster=~"$cluster", namespace=~"$namespace", job=~"$job"'


def _job_instance() -> str:
    return _JOB + ', instance=~"$instance"'


def _query_var(name: str, label: str, query: str) -> dash.QueryVariable:
    return (
        dash.QueryVariable(name)
        .label(label)
        .datasource(DS)
        .query({"query": query, "refId": f"{name}-var"})
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(model.VariableOption(selected=True, text="All", value="$__all"))
    )


def base(cfg: Config, title: str, uid: str, description: str, with_method: bool = False) -> dash.Dashboard:
    return (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .editable()
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .variables(variables(cfg, with_method))
    )


# --- e6data / Blue-green overview --------------------------------------------------------------
STRATEGY_MAPPINGS: List[model.ValueMapping] = [
    model.ValueMap(
        options={
            "0": model.ValueMappingResult(text="none", color="text", index=0),
            "1": model.ValueMappingResult(text="blue", color="blue", index=1),
            "2": model.ValueMappingResult(text="green", color="green", index=2),
            "3": model.ValueMappingResult(text="invalid", color="red", index=3),
        }
    )
]


def blue_green_overview(cfg: Config = DEFAULT) -> dash.Dashboard:
    d = base(
        cfg,
        "e6data / Blue-green overview",
        "e6data-blue-green-overview",
        "Blue/green switches as e6data clients see them: who has flipped, how long drains "
        "took, mismatches, queries failed mid-switch, and query traffic split by strategy. "
        "Generated by scripts/regen-dashboards; do not edit.",
    )
    d = d.annotation(
        dash.AnnotationQuery()
        .name("Strategy switches")
        .datasource(DS)
        .enable(True)
        .icon_color("orange")
        # One annotation per population and switch (the value: how many of its clients applied
        # it in that minute), not one per client: 1 000 pods made it 2 000 series per refresh.
        .expr(f"{Q.switches(SEL, '1m', Q.POPULATION + ', from, to, cause')} > 0")
    )

    d = d.with_row(dash.Row("Who runs on which colour"))
    d = d.with_panel(
        statetimeline.Panel()
        .title("Active strategy per client")
        .datasource(DS)
        .span(16)
        .height(9)
        .description(
            "The colour each client's connector routes new queries to. A client still on "
            "the old colour after the others flipped has not followed the switch."
        )
        .with_target(target(R.recorded(R.active_code(cfg), SEL), CLIENT_LEGEND))
        .mappings(STRATEGY_MAPPINGS)
        .show_value(common.VisibilityMode.NEVER)
        .merge_values(True)
        .color_scheme(dash.FieldColor().mode(model.FieldColorModeId.FIXED).fixed_color("text"))
    )
    d = d.with_panel(
        ts(
            "Clients per strategy",
            "Number of clients whose active strategy is blue or green.",
            [target(Q.clients_per_strategy(SEL), "{{strategy}}")],
            span=8,
            height=9,
            stacked=True,
        )
    )

    d = d.with_row(dash.Row("Switches"))
    d = d.with_panel(
        ts(
            "Switches",
            "Applied switches by direction and cause (announced: graceful drain; mismatch: "
            "learned from a 456; observed: seen by the watcher).",
            [target(Q.switches(SEL, RATE, "from, to, cause"), "{{from}} → {{to}} ({{cause}})")],
            span=8,
            bars=True,
        )
    )
    d = d.with_panel(
        ts(
            "Drain time",
            "Seconds from the server's announcement to the applied switch, per client "
            "(mean over the window; the slowest clients) and as quantiles over the dashboard's time "
            "range for the selected populations (cluster, namespace, job; from a recording rule, so "
            "a chosen instance or pod shows its population's)." + top_note(cfg),
            refs(
                [
                    (R.top_client_record(M.SWITCH_DRAIN, SEL, cfg), "mean " + CLIENT_LEGEND),
                    (R.range_quantile(0.5, R.drain_bucket_rate(cfg), POP), "p50 (range)"),
                    (
                        R.with_exemplars(
                            R.range_quantile(0.95, R.drain_bucket_rate(cfg), POP), M.SWITCH_DRAIN, SEL
                        ),
                        "p95 (range)",
                    ),
                ],
                exemplar=True,
            ),
            unit="s",
            span=8,
        )
    )
    d = d.with_panel(
        ts(
            "Pending switches",
            "Strategies announced and not applied yet, and how long they have "
            "waited (the clients waiting longest). A pending switch that does not drain is blocked "
            "by uncleared queries." + top_note(cfg),
            refs(
                [
                    (Q.pending(SEL), "pending {{strategy}}"),
                    (R.top_client_record(M.PENDING_AGE, SEL, cfg), "age " + CLIENT_LEGEND),
                ]
            ),
            span=8,
        )
    )
    d = d.with_panel(
        ts(
            "Strategy mismatches (456)",
            "456 errors per second by the strategy the client sent and "
            "the RPC method, and as a share of all RPCs per population (alert above "
            f"{alerts._num(cfg.mismatch_ratio * 100)}%; a chosen instance or pod shows its "
            "population's share).",
            refs(
                [
                    (Q.mismatch_rate(SEL, RATE), "{{strategy}} {{method}}"),
                    (R.mismatch_ratio(POP, "job", cfg), "share of RPCs {{job}}"),
                ]
            ),
            span=12,
        )
    )
    d = d.with_panel(
        ts(
            "Queries failed mid-switch",
            "Queries that failed because a switch landed while they ran "
            '(outcome="switch_interrupted"), per population and for the clients that lost the '
            "most." + top_note(cfg),
            refs(
                [
                    (Q.interrupted(SEL, RATE, Q.POPULATION), "{{job}}"),
                    (top(cfg, R.recorded(R.interrupted_increase(cfg), SEL)), CLIENT_LEGEND),
                ]
            ),
            span=12,
            bars=True,
        )
    )

    d = d.with_row(dash.Row("Auto-resume and the connector's other caches"))
    d = d.with_panel(
        ts(
            "Cluster resumes",
            "Auto-resumes of a suspended cluster by outcome (ok, failed, "
            "timeout); one per cluster resume, however many threads waited for it.",
            [target(Q.resumes(SEL, RATE), "{{outcome}}")],
            span=6,
            bars=True,
        )
    )
    d = d.with_panel(
        ts(
            "Resume duration",
            "Seconds from the 503 the connector acted on to the cluster answering "
            "active, per client (mean; the slowest clients) and over the range for the selected "
            "populations (a chosen instance or pod shows its population's; alert above "
            f"{alerts._num(cfg.resume_slow_seconds)}s)." + top_note(cfg),
            refs(
                [
                    (R.top_client_record(M.CLUSTER_RESUME_DURATION, SEL, cfg), "mean " + CLIENT_LEGEND),
                    (R.range_quantile(0.95, R.resume_bucket_rate(cfg), POP), "p95 (range)"),
                ]
            ),
            unit="s",
            span=6,
        )
    )
    d = d.with_panel(
        ts(
            "Last seen cluster status",
            "The cluster status each client's connector last saw: 1 "
            "active, 2 suspended, 3 resuming, 4 failed, 5 other (the highest codes first)." + top_note(cfg),
            [target(top(cfg, R.recorded(R.cluster_status_code(cfg), SEL)), CLIENT_LEGEND)],
            span=6,
        )
    )
    d = d.with_panel(
        ts(
            "Queries that waited for a resume",
            "Queries that ran ok after waiting for an "
            'auto-resume (outcome="resumed"): slow because the cluster was suspended.',
            [target(Q.resumed_queries(SEL, RATE), "{{strategy}}")],
            span=6,
            bars=True,
        )
    )
    d = d.with_panel(
        ts(
            "Switches outside the process cache",
            "Switches of the cluster manager's own cache "
            "(scope cluster_manager) and of single OAuth connections (scope connection).",
            [target(Q.scoped_switches(SEL, RATE), "{{from}} → {{to}} ({{scope}})")],
            span=8,
            bars=True,
        )
    )
    d = d.with_panel(
        ts(
            "Caches split",
            "1 while the cluster manager's cache names another colour than the process cache."
            + top_note(cfg),
            [target(R.top_client_record(M.CACHE_SPLIT, SEL, cfg), CLIENT_LEGEND)],
            span=8,
        )
    )
    d = d.with_panel(
        ts(
            "Refused strategy values",
            "Announced strategy values the connector refused, by reason "
            "(a login that keeps getting one recurses until RecursionError).",
            [target(Q.rejected(SEL, RATE), "{{reason}}")],
            span=8,
            bars=True,
        )
    )

    d = d.with_row(dash.Row("Queries by strategy"))
    d = d.with_panel(
        ts(
            "Query rate",
            "Queries finished per second, by the strategy they ran on.",
            [target(R.query_rate(SEL, cfg), "{{strategy}}")],
            unit="reqps",
            span=6,
        )
    )
    d = d.with_panel(
        ts(
            "Query failures",
            "Queries per second that did not end ok, by strategy and outcome.",
            [target(R.query_failures(SEL, cfg), "{{strategy}} {{outcome}}")],
            unit="reqps",
            span=6,
        )
    )
    d = d.with_panel(
        ts(
            "Query latency",
            "Query duration quantiles (execute to clear), by strategy, for the selected "
            "populations (from a recording rule per cluster, namespace and job: a chosen instance "
            "or pod shows its population's).",
            [
                target(R.query_latency(0.5, POP, cfg), "p50 {{strategy}}", "A"),
                target(R.query_latency(0.95, POP, cfg), "p95 {{strategy}}", "B"),
                target(
                    R.with_exemplars(R.query_latency(0.99, POP, cfg), M.QUERY_DURATION, SEL),
                    "p99 {{strategy}}",
                    "C",
                    exemplar=True,
                ),
            ],
            unit="s",
            span=6,
        )
    )
    d = d.with_panel(
        ts(
            "Queries in flight",
            "Queries executed and not yet cleared, by the strategy they are pinned to.",
            [target(Q.queries_in_flight(SEL), "{{strategy}}")],
            span=6,
        )
    )
    return d


# --- e6data / Client runtime -------------------------------------------------------------------
def client_runtime(cfg: Config = DEFAULT) -> dash.Dashboard:
    d = base(
        cfg,
        "e6data / Client runtime",
        "e6data-client-runtime",
        "The connector's RPCs and the health of each instrumented process: latency by "
        "method, retries, memory, GC, threads, file descriptors, pools, watcher heartbeat and "
        "e6observe's own errors. Generated by scripts/regen-dashboards; do not edit.",
        with_method=True,
    )
    d = d.with_row(dash.Row("RPCs"))
    d = d.with_panel(
        heatmap.Panel()
        .title("RPC latency: $method")
        .datasource(DS)
        .span(8)
        .height(8)
        .description(
            "Distribution of gRPC call durations, one heatmap per method, for the selected "
            "populations (a chosen instance or pod shows its population's)."
        )
        .repeat("method")
        .repeat_direction("h")
        .max_per_row(3)
        .with_target(target(R.rpc_heatmap(POP, cfg), "{{le}}", fmt="heatmap"))
        .calculate(False)
        .y_axis(heatmap.YAxisConfig().unit("s"))
        .color(
            heatmap.HeatmapColorOptions()
            .mode(heatmap_model.HeatmapColorMode.SCHEME)
            .scheme("Oranges")
            .scale(heatmap_model.HeatmapColorScale.EXPONENTIAL)
            .exponent(0.5)
            .steps(64)
        )
        .rows_frame(heatmap.RowsHeatmapOptions().layout(common.HeatmapCellLayout.LE))
    )
    d = d.with_panel(
        ts(
            "RPC p95 by method",
            "95th percentile gRPC call duration per method, for the selected populations (a "
            "chosen instance or pod shows its population's).",
            [target(R.rpc_latency(0.95, POP, cfg), "{{method}}")],
            unit="s",
            span=8,
        )
    )
    d = d.with_panel(
        ts(
            "RPCs by status code",
            "gRPC calls per second by method and status code, for the selected populations (a "
            "chosen instance or pod shows its population's).",
            [target(R.rpc_rate_by_code(POP, cfg), "{{method}} {{code}}")],
            unit="reqps",
            span=8,
        )
    )
    d = d.with_panel(
        ts(
            "Retries",
            "Times the connector's retry loop replayed an operation, by reason.",
            [target(Q.retries(SEL, RATE), "{{reason}}")],
            unit="ops",
            span=8,
        )
    )

    d = d.with_row(dash.Row("Process"))
    d = d.with_panel(
        ts(
            "Memory",
            "Resident and unique memory per client." + top_note(cfg),
            refs(
                [
                    (R.top_client_record(M.PROCESS_RSS, SEL, cfg), "rss " + CLIENT_LEGEND),
                    (R.top_client_record(M.PROCESS_USS, SEL, cfg), "uss " + CLIENT_LEGEND),
                ]
            ),
            unit="bytes",
            span=8,
        )
    )
    d = d.with_panel(
        ts(
            "CPU",
            "CPU seconds per second per client." + top_note(cfg),
            [target(R.top_client_record(M.PROCESS_CPU, SEL, cfg), CLIENT_LEGEND)],
            unit="percentunit",
            span=8,
        )
    )
    d = d.with_panel(
        ts(
            "Garbage collections",
            "Collections per second by generation, and uncollectable objects, per client and "
            "generation." + top_note(cfg),
            refs(
                [
                    (
                        R.top_client_record(M.GC_COLLECTIONS, SEL, cfg),
                        "gen {{generation}} " + CLIENT_LEGEND,
                    ),
                    (
                        R.top_client_record(M.GC_UNCOLLECTABLE, SEL, cfg),
                        "uncollectable gen {{generation}} " + CLIENT_LEGEND,
                    ),
                ]
            ),
            unit="ops",
            span=8,
        )
    )
    d = d.with_panel(
        ts(
            "Threads",
            "OS threads per client." + top_note(cfg),
            [target(R.top_client_record(M.PROCESS_THREADS, SEL, cfg), CLIENT_LEGEND)],
            span=8,
        )
    )
    d = d.with_panel(
        ts(
            "Open file descriptors",
            "Open file descriptors per client." + top_note(cfg),
            [target(R.top_client_record(M.PROCESS_FDS, SEL, cfg), CLIENT_LEGEND)],
            span=8,
        )
    )
    d = d.with_panel(
        ts(
            "Query map vs queries in flight",
            "Entries in the connector's query-to-strategy map next to "
            "the queries e6observe sees in flight; a map that grows while queries finish is a leak."
            + top_note(cfg),
            refs(
                [
                    (
                        R.top_client_record(M.QUERY_MAP_ENTRIES, SEL, cfg),
                        "map " + CLIENT_LEGEND,
                    ),
                    (R.top_client_record(M.QUERIES_IN_FLIGHT, SEL, cfg), "in flight " + CLIENT_LEGEND),
                ]
            ),
            span=8,
        )
    )

    d = d.with_row(dash.Row("Connections and pools"))
    d = d.with_panel(
        ts(
            "Pool connections",
            "Pooled connections by pool and state, and each pool's maximum." + top_note(cfg),
            refs(
                [
                    (top(cfg, Q.pool_connections(SEL)), "{{pool}} {{state}} " + CLIENT_LEGEND),
                    (
                        top(cfg, f"sum by ({Q.CLIENT}, pool) ({Q.gauge(M.POOL_MAX, SEL)})"),
                        "{{pool}} max " + CLIENT_LEGEND,
                    ),
                ]
            ),
            span=8,
        )
    )
    d = d.with_panel(
        ts(
            "Pool waits",
            "Callers waiting for a pooled connection, and the p95 wait.",
            refs(
                [
                    (f"sum by (pool) ({Q.gauge(M.POOL_PENDING, SEL)})", "{{pool}} waiting"),
                    (Q.pool_wait(0.95, SEL, RATE), "{{pool}} p95 wait (s)"),
                ]
            ),
            span=8,
        )
    )
    d = d.with_panel(
        ts(
            "Open connections",
            "Connector connections with an open gRPC channel, per client." + top_note(cfg),
            [target(R.top_client_record(M.CONNECTIONS_OPEN, SEL, cfg), CLIENT_LEGEND)],
            span=8,
        )
    )

    d = d.with_row(dash.Row("e6observe"))
    d = d.with_panel(
        ts(
            "Watcher heartbeat age",
            "Seconds since the watcher thread last ran (alert above "
            f"{alerts._num(cfg.watcher_stale_seconds)} s), and the strategy cache's age." + top_note(cfg),
            refs(
                [
                    (
                        top(cfg, "time() - " + R.recorded(R.client_record(M.WATCHER_LAST_RUN, cfg), SEL)),
                        "watcher " + CLIENT_LEGEND,
                    ),
                    (
                        R.top_client_record(M.CACHE_AGE, SEL, cfg),
                        "cache " + CLIENT_LEGEND,
                    ),
                ]
            ),
            unit="s",
            span=8,
        )
    )
    d = d.with_panel(
        ts(
            "Internal errors",
            "Failures inside e6observe, contained and counted (never raised into "
            "the application), by component; 0 per client when there were none." + top_note(cfg),
            [
                target(
                    R.top_client_record(M.INTERNAL_ERRORS, SEL, cfg),
                    "{{component}} " + CLIENT_LEGEND,
                )
            ],
            span=8,
        )
    )
    d = d.with_panel(
        ts(
            "Events dropped",
            "Events dropped by a bounded queue or sink; 0 per client when none were." + top_note(cfg),
            [
                target(
                    R.top_client_record(M.EVENTS_DROPPED, SEL, cfg),
                    "{{sink}} " + CLIENT_LEGEND,
                )
            ],
            span=8,
        )
    )
    d = d.with_panel(
        table.Panel()
        .title("Versions")
        .datasource(DS)
        .span(24)
        .height(6)
        .description("e6observe and connector version of each client.")
        .with_target(
            target(
                f"max by ({Q.CLIENT}, version, connector_version) ({Q.gauge(M.BUILD_INFO, SEL)})",
                fmt="table",
                instant=True,
            )
        )
    )
    return d


DASHBOARDS: Dict[str, Callable[[Config], dash.Dashboard]] = {
    "e6data-blue-green-overview.json": blue_green_overview,
    "e6data-client-runtime.json": client_runtime,
}


# --- output ------------------------------------------------------------------------------------
def dashboard_json(builder: dash.Dashboard) -> str:
    data = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    _fix_annotations(data)
    # Grafana keys panel state (links, repeats) by id; the SDK leaves ids unset. Number them in
    # layout order so they are stable for a given layout.
    for i, panel in enumerate(data.get("panels", []), start=1):
        panel["id"] = i
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _fix_annotations(data: Dict[str, Any]) -> None:
    # The SDK's annotation model has no Prometheus title/tag fields; Grafana reads them here.
    # The step is the scrape interval the queries assume (60 s): at 30 s the 1 m increase was
    # evaluated twice per scrape, twice the cost (benchmarks/fleet.py times it at 60 s).
    for ann in data.get("annotations", {}).get("list", []):
        if ann.get("name") == "Strategy switches":
            ann.update(
                {
                    "titleFormat": "{{from}} → {{to}} ({{cause}})",
                    "tagKeys": "cluster,namespace,job,cause",
                    "step": "1m",
                    "textFormat": "{{cluster}} {{namespace}} {{job}}",
                }
            )


#: Generated paths, relative to the repository root. The chart's copies are byte-equal to the
#: originals: Helm can only read files inside the chart directory.
RULES = Path("dashboards/rules/e6observe.rules.yaml")
#: The recording rules the dashboards read (e6observe/mixin/records.py).
RECORDS = Path("dashboards/rules/e6observe.records.yaml")
CHART = Path("helm/e6observe/files")
#: Per-alert threshold metadata for the chart's overrides (JSON, which YAML reads too).
THRESHOLDS = "e6observe.thresholds.yaml"


#: The copies shipped in the wheel for ``e6observe export``: the generated files, their promtool
#: tests and runbook, byte-equal to the originals. The rule generator itself (config, queries,
#: alerts) lives in the package, ``e6observe/mixin/``, so export can regenerate the rules with
#: other settings; this module imports it from there (one source).
PACKAGE = Path("e6observe/mixin")
PACKAGE_SOURCES = {
    PACKAGE / "files/rules/tests/e6observe.rules.test.yaml": Path(
        "dashboards/rules/tests/e6observe.rules.test.yaml"
    ),
    PACKAGE / "files/docs/runbook.md": Path("docs/runbook.md"),
    PACKAGE / "files/docs/alerts.md": Path("docs/alerts.md"),
}


def generated(cfg: Config = DEFAULT) -> Dict[Path, str]:
    """Every generated file (relative path) and its exact content."""
    out: Dict[Path, str] = {}
    for fname, fn in DASHBOARDS.items():
        text = dashboard_json(fn(cfg))
        out[Path("dashboards/json") / fname] = text
        out[CHART / "dashboards" / fname] = text
        out[PACKAGE / "files/dashboards" / fname] = text
    rules = alerts.render_rules(cfg)
    out[RULES] = rules
    out[CHART / "rules" / RULES.name] = rules
    out[CHART / "rules" / THRESHOLDS] = (
        alerts.HEADER + json.dumps(alerts.thresholds(cfg), indent=2, sort_keys=True) + "\n"
    )
    out[PACKAGE / "files/rules" / RULES.name] = rules
    recorded = records.render_records(cfg)
    out[RECORDS] = recorded
    out[CHART / "rules" / RECORDS.name] = recorded
    out[PACKAGE / "files/rules" / RECORDS.name] = recorded
    for copy, source in PACKAGE_SOURCES.items():
        out[copy] = (ROOT / source).read_text(encoding="utf-8")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="regen-dashboards", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 on any difference")
    ap.add_argument(
        "--root", type=Path, default=ROOT, help="tree to write or check (default: this repository)"
    )
    args = ap.parse_args(argv)
    drift = []
    for rel, text in generated().items():
        path = args.root / rel
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        drift.append(rel)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if args.check and drift:
        print("out of date (run scripts/regen-dashboards):", *drift, sep="\n  ", file=sys.stderr)
        return 1
    for p in drift:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
