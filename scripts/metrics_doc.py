"""Write docs/metrics.md, the metric reference, from the metric table in e6observe/metrics.py.

    python scripts/metrics_doc.py            # (re)write docs/metrics.md if it changed
    python scripts/metrics_doc.py --check    # write nothing; exit 1 if docs/metrics.md is stale

Names, kinds, units, labels, buckets and help texts come from ``e6observe.metrics``; the label
value sets from the constants the recorder, the sinks, the pool hook and the prober normalise
to. This file adds only the prose the table cannot carry: what each label value means, and where
an exporter does not follow the table (``NOT_ON_PROMETHEUS``, ``NOT_ON_OTEL``,
``OTEL_EXTRA_ATTRIBUTES``). ``tests/test_docs.py`` checks those claims against a real
instrumented run, and fails when the committed file differs from what this script writes.
``scripts/regen-docs`` runs it with the project's interpreter; ``./run regen`` runs that too.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

from e6observe import metrics as M

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = Path("docs") / "metrics.md"


# -- what the table cannot say ------------------------------------------------------------------
#: Metrics in the table that the Prometheus endpoint of an instrumented application does not
#: render, and why. (Verified by tests/test_docs.py.)
NOT_ON_PROMETHEUS: dict[str, str] = {}
#: Metrics with an OpenTelemetry name in the table that no OpenTelemetry instrument reports.
NOT_ON_OTEL: dict[str, str] = {}
#: OpenTelemetry attributes a data point carries besides the ones mapped from its labels.
OTEL_EXTRA_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    M.QUERY_DURATION.prom_name: ("db.system.name", "server.address", "server.port", "e6data.query.outcome"),
    M.RPC_DURATION.prom_name: ("rpc.system.name", "server.address", "server.port", "error.type"),
}


@dataclass(frozen=True)
class Label:
    """One label: its bounded values (None: a set fixed by the code but not listed) and prose."""

    text: str
    values: Optional[tuple[str, ...]] = None
    meanings: Optional[Mapping[str, str]] = None


def _with_meanings(values: Sequence[str], meanings: Mapping[str, str], name: str) -> Label:
    if set(meanings) != set(values):
        raise SystemExit(
            f"metrics_doc: the meanings of label {name!r} ({sorted(meanings)}) do not "
            f"match its values ({sorted(values)}); update scripts/metrics_doc.py"
        )
    return Label("", tuple(values), meanings)


def labels() -> dict[str, Label]:
    """Every label name of the table, with its value set."""
    from e6observe.cli.probe import RESULTS
    from e6observe.hooks.pool import MAX_POOL_NAMES, OTHER
    from e6observe.recorder import CLUSTER_RPC_METHODS, GRPC_CODES, RETRY_REASONS, RPC_METHODS

    strategy_text = (
        "The colour a value applies to, normalised by `norm_strategy`: `blue` or `green`; `none` "
        "while no strategy is known (no query has run yet, or the cache was just cleared); "
        "`invalid` for anything else a server sent. `e6data_strategy_active` and "
        "`e6data_strategy_pending` always show `blue` and `green` and show `none`/`invalid` only "
        "while that is the value; `e6data_queries_in_flight` always shows all four."
    )
    try:
        import grpc

        codes = tuple(c.name for c in grpc.StatusCode if c.name in GRPC_CODES)
    except ImportError:  # pragma: no cover - grpcio is a dependency
        codes = tuple(sorted(GRPC_CODES))
    methods = tuple(sorted(RPC_METHODS)) + ("other",) + tuple(sorted(CLUSTER_RPC_METHODS))

    out: dict[str, Label] = {
        "strategy": Label(strategy_text, M.STRATEGY_LABELS),
        "from": Label("The colour a switch left. Same values as [`strategy`](#strategy).", M.STRATEGY_LABELS),
        "to": Label(
            "The colour a switch went to. Same values as [`strategy`](#strategy). The "
            "series `blue`→`green` and `green`→`blue` exist at 0 for every cause from "
            "start-up, so `increase()` sees the first switch.",
            M.STRATEGY_LABELS,
        ),
        "cause": _with_meanings(
            M.SWITCH_CAUSES,
            {
                "announced": "the server sent `new_strategy` and the connector applied it once its "
                "queries drained",
                "mismatch": "the connector learned the new colour from a `status: 456` error (cache "
                "cleared, other colour learned)",
                "observed": "the watcher saw the connector's cache change with no hook reporting why",
            },
            "cause",
        ),
        "outcome": _with_meanings(
            M.QUERY_OUTCOMES + ("failed", "timeout"),
            {
                "ok": "queries: the query ran to its clear/close without an error; resumes: the "
                "cluster answered active",
                "error": "queries: the query failed",
                "switch_interrupted": "queries: the query failed with a 456 because a switch landed "
                "while it ran under the old colour",
                "resumed": "queries: the query ran without an error after waiting for the "
                "connector's auto-resume of a suspended cluster",
                "failed": "resumes (`e6data_cluster_resume*`): the resume failed (an RPC error, a "
                "`failed` status, a refused resume)",
                "timeout": "resumes: the connector's resume budget "
                "(`grpc_auto_resume_timeout_seconds`, async `auto_resume_timeout`) ran out",
            },
            "outcome",
        ),
        "scope": _with_meanings(
            M.SWITCH_SCOPES[1:],
            {
                "cluster_manager": "the auto-resume cluster manager's own cache (`strategy.py`), "
                "never synchronised with the process cache",
                "connection": "one connection re-routed by itself (OAuth, after a 456); the process "
                "cache stays on the old colour",
            },
            "scope",
        ),
        "status": _with_meanings(
            M.CLUSTER_STATUSES,
            {
                "unknown": "no status seen yet",
                "active": "ClusterService answered `active` (or a resume finished ok)",
                "suspended": "ClusterService answered `suspended`, or an engine RPC failed with "
                "`status: 503`",
                "resuming": "ClusterService answered `resuming`",
                "failed": "ClusterService answered `failed`",
                "other": "any other status string",
            },
            "status",
        ),
        "kind": _with_meanings(
            M.EVENT_KINDS,
            {
                "detected": "the first strategy this process (or, with a scope, that cache) learned "
                "(not a switch)",
                "suspended_seen": "the connector saw the cluster suspended (once per suspension)",
                "resume_started": "the connector's auto-resume found the cluster suspended and waits",
                "resume_finished": "the auto-resume ended (ok, failed, timeout), with its duration",
                "strategy_rejected": "the connector refused an announced strategy value (at most one "
                "event per reason per 5 s; every refusal is counted)",
                "announced": "the server announced a switch; the connector applies it once queries drain",
                "applied": "a switch took effect in this process (counted in "
                "`e6data_strategy_switches_total`)",
                "mismatch": "a `status: 456` strategy-mismatch error",
                "cache_cleared": "the connector cleared its cached strategy",
                "retry": "the connector's retry loop replayed an operation",
            },
            "kind",
        ),
        "method": Label(
            "The gRPC method, by its short name, normalised by `norm_method`: one of the methods "
            "of the installed connector's engine service descriptor, else `other`. With the "
            f"connector this file was generated with ({_connector_version()}):",
            methods,
        ),
        "code": Label(
            "The gRPC status code name, normalised by `norm_code`; anything unknown is "
            "`UNKNOWN`. A 456 strategy mismatch arrives as `UNKNOWN`.",
            codes,
        ),
        "reason": _with_meanings(
            tuple(sorted(RETRY_REASONS)) + M.REJECTED_REASONS,
            {
                "mismatch": "retries: the replayed call had failed with a `status: 456` mismatch",
                "access_denied": "retries: the replayed call had failed `INTERNAL` with `Access "
                "denied` (an expired or unknown session; the connector logs in again)",
                "resume": "retries: the connector resumed the suspended cluster and replays the "
                "login (sync) or the prepare (OAuth, async)",
                "other": "retries: any other error",
                "unknown": "refused strategy values (`e6data_strategy_rejected_total`): not blue or "
                "green (e.g. `purple`)",
                "padded": "refused strategy values: a colour with whitespace around it",
                "oversized": "refused strategy values: longer than 64 characters",
                "not_text": "refused strategy values: not a string",
            },
            "reason",
        ),
        "component": Label(
            "The part of e6observe that contained a failure, e.g. `sink.prometheus`, "
            "`sink.otel.metrics`, `watcher`, `hook.install.cursor`, `server`, `runtime.collect`. "
            "A fixed set of names in the code (no value comes from outside). Each failure is "
            "counted here and logged once per component and exception type."
        ),
        "sink": _with_meanings(
            ("dispatch", "otlp", "query_spans"),
            {
                "dispatch": "the recorder's queue to event subscribers was full (10000 events)",
                "otlp": "the OpenTelemetry log batch processor's queue was full and dropped a record",
                "query_spans": '`query_spans="deferred"`: the queue of finished queries waiting for '
                "the span thread was full (4096), or the tracer had stopped; the query's span is dropped",
            },
            "sink",
        ),
        "generation": Label(
            "The garbage collector generation, as `gc.get_stats()` numbers them.", ("0", "1", "2")
        ),
        "pool": Label(
            f"The connection pool: `pool-<n>` in the order this process first saw its pools; past "
            f"{MAX_POOL_NAMES} names they share `{OTHER}`. An application can name a pool with "
            "`e6observe.hooks.pool.name_pool(pool, name)` (`[A-Za-z0-9_.-]`, at most 32 "
            "characters)."
        ),
        "state": Label("Pooled connections by state.", ("idle", "used")),
        "result": _with_meanings(
            RESULTS,
            {
                "success": "the probe query returned 1",
                "failure": "the probe failed (connect, query, fetch or clear)",
                "timeout": "the probe did not finish within `--timeout`",
            },
            "result",
        ),
        "version": Label(
            "The e6observe version (one value per process); on `python_info`, the Python version."
        ),
        "implementation": Label(
            "Python implementation (`CPython`, ...), from prometheus_client's `PlatformCollector`."
        ),
        "major": Label("Python major version."),
        "minor": Label("Python minor version."),
        "patchlevel": Label("Python patch level."),
        "connector_version": Label(
            "The installed `e6data-python-connector` version (one value "
            "per process; `unknown` if it cannot be read)."
        ),
    }
    used = {name for m in M.ALL for name in m.labels}
    if used != set(out):
        raise SystemExit(
            f"metrics_doc: labels without a description {sorted(used - set(out))}, "
            f"descriptions of unused labels {sorted(set(out) - used)}; update "
            "scripts/metrics_doc.py"
        )
    return out


def _connector_version() -> str:
    from e6observe._version import connector_version

    return "e6data-python-connector " + (connector_version() or "(version unknown)")


# -- groups -------------------------------------------------------------------------------------
GROUPS: tuple[tuple[str, str], ...] = (
    ("switches", "Blue/green state, switches, queries and RPCs"),
    ("self", "e6observe itself"),
    ("watcher", "Watcher: heartbeat and connector cache health"),
    ("runtime", "Process runtime"),
    ("pools", "Connection pools"),
    ("prober", "Prober (`e6observe probe`)"),
)


def group_of(m: M.MetricSpec) -> str:
    by_source = {"probe": "prober", "pool": "pools", "runtime": "runtime", "watcher": "watcher"}
    if m.source in by_source:
        return by_source[m.source]
    if m.prom_name.startswith("e6observe_"):
        return "self"
    return "switches"


def prometheus_exported(m: M.MetricSpec) -> bool:
    """Shown on the Prometheus endpoint of the process that exports ``m``."""
    return m.prom_name not in NOT_ON_PROMETHEUS


def otel_exported(m: M.MetricSpec) -> bool:
    return m.otel_name is not None and m.prom_name not in NOT_ON_OTEL


def otel_attributes(m: M.MetricSpec) -> tuple[str, ...]:
    """Attribute names an OpenTelemetry data point of ``m`` may carry."""
    return (m.otel_labels or m.labels) + OTEL_EXTRA_ATTRIBUTES.get(m.prom_name, ())


def multiprocess_behaviour(m: M.MetricSpec) -> str:
    from e6observe.sinks.scrape import COUNTERS, HISTOGRAMS

    if group_of(m) == "prober":
        return "not applicable (the prober is one process)"
    if not prometheus_exported(m):
        return "not applicable (not on `/metrics`)"
    if m in COUNTERS or m in HISTOGRAMS or m is M.INTERNAL_ERRORS:
        return "summed over every worker, including workers that have exited"
    if m is M.LAST_SWITCH:
        return "the latest switch of any worker"
    if m is M.BUILD_INFO:
        return "one series, from the process serving `/metrics`"
    return "one series per live worker, with a `pid` label"


# -- rendering ----------------------------------------------------------------------------------
def _code(names: Sequence[str]) -> str:
    return ", ".join(f"`{n}`" for n in names)


def _label_links(names: Sequence[str]) -> str:
    return ", ".join(f"[`{n}`](#{n})" for n in names) if names else "none"


def _number(x: float) -> str:
    return format(x, "g")


def _heading(m: M.MetricSpec) -> str:
    return m.exposed_names[0] if m.kind in ("counter", "info") else m.prom_name


def _series(m: M.MetricSpec) -> str:
    return _code(m.exposed_names)


def _metric_section(m: M.MetricSpec, notes: Mapping[str, str]) -> list[str]:
    lines = [f"### `{_heading(m)}`", "", m.help, ""]
    lines.append(f"- **Prometheus:** {m.kind}; series {_series(m)}; labels {_label_links(m.labels)}")
    if m.buckets:
        lines.append(f"- **Buckets** (`le`, {m.unit}): {', '.join(_number(b) for b in m.buckets)}, `+Inf`")
    if m.otel_name is None:
        lines.append("- **OpenTelemetry:** not exported")
    elif not otel_exported(m):
        lines.append(
            f"- **OpenTelemetry:** not exported ({NOT_ON_OTEL[m.prom_name]} The table "
            f"reserves the name `{m.otel_name}`.)"
        )
    else:
        attrs = otel_attributes(m)
        lines.append(
            f"- **OpenTelemetry:** `{m.otel_name}`, unit `{m.unit}`; attributes "
            f"{_code(attrs) if attrs else 'none'}"
        )
    if not prometheus_exported(m):
        lines.append(f"- **Not on `/metrics`:** {NOT_ON_PROMETHEUS[m.prom_name]}")
    lines.append(f"- **Multi-process mode:** {multiprocess_behaviour(m)}")
    note = notes.get(m.prom_name)
    if note:
        lines.append(f"- **Note:** {note}")
    lines.append("")
    return lines


def _query_error_types() -> str:
    from e6observe.sinks.otel import ERROR_TYPES

    pairs = [f"`{outcome}` → `{etype}`" for outcome, etype in ERROR_TYPES.items()]
    ok = [o for o in M.QUERY_OUTCOMES if o not in ERROR_TYPES]
    return (
        f"`error.type` is derived from `outcome` ({', '.join(pairs)}; absent for "
        f"{_code(ok)}); a query that waited for an auto-resume carries "
        "`e6data.query.outcome` = `resumed`"
    )


def _notes() -> dict[str, str]:
    from e6observe.sinks.otel import DB_SYSTEM

    return {
        M.QUERY_DURATION.prom_name: (
            f"OpenTelemetry: {_query_error_types()}; `db.system.name` is `{DB_SYSTEM}`; "
            "`server.address`/`server.port` name the cluster endpoint when known."
        ),
        M.RPC_DURATION.prom_name: (
            "OpenTelemetry: `rpc.method` is the fully qualified `<service>/<method>` "
            "(`_OTHER` for a method outside the set), `rpc.system.name` is `grpc`, "
            "`error.type` is the status code of a failed call (absent when `OK`), "
            "`server.address`/`server.port` name the cluster endpoint when known."
        ),
        M.PROCESS_CPU.prom_name: (
            "Prometheus shows user + system time as one series; OpenTelemetry splits it by "
            "`cpu.mode` (`user`, `system`)."
        ),
        M.PROBE_SUCCESS.prom_name: "Absent until the first probe has finished.",
        M.STRATEGY_LOCK_HELD_AT_FORK.prom_name: "0 in a process that was not forked.",
    }


def _label_section(name: str, label: Label) -> list[str]:
    lines = [f"### `{name}`", ""]
    if label.text:
        lines += [label.text, ""]
    if label.meanings is not None and label.values is not None:
        lines += [f"- `{v}`: {label.meanings[v]}" for v in label.values]
        lines.append("")
    elif label.values is not None:
        lines += [_code(label.values), ""]
    users = [_heading(m) for m in M.ALL if name in m.labels]
    lines += [f"Used by: {', '.join(f'[`{u}`](#{u})' for u in users)}.", ""]
    return lines


HEADER = """\
# Metric reference

<!-- Generated by scripts/metrics_doc.py from e6observe/metrics.py. Do not edit by hand:
     run ./run regen (or scripts/regen-docs); tests/test_docs.py fails when this file is stale. -->

Every metric e6observe exports, with its Prometheus and OpenTelemetry names. All of them come
from one table, `e6observe/metrics.py`, which the exporters, the dashboards and the alert rules
are built from; the names are a public contract.

How to read it:

- **Prometheus names** are shown as exposed: counters end in `_total`; histograms are
  `_bucket` (with `le`), `_sum` and `_count`. Units are in the name (`_seconds`, `_bytes`).
- **OpenTelemetry names** follow the semantic conventions where one exists
  (`db.client.operation.duration`, `rpc.client.call.duration`, `db.client.connection.*`,
  `process.*`, `cpython.gc.*`); the unit is given in UCUM (`s`, `By`, `{query}`).
- **Label values are bounded.** Every value comes from a fixed set (see
  [Label values](#label-values)), whatever a server sends, so the number of series per process
  is fixed too.
- **Who exports what.** An application with `e6observe.instrument()` exports every metric below
  except the prober's (the pool metrics once it uses one of the connector's connection pools);
  `e6observe probe` is itself an instrumented application and adds its own three. A few
  metrics are missing from one of the two exporters; their entries say so.
- **Multi-process mode** (`multiprocess_dir` / `PROMETHEUS_MULTIPROC_DIR`, see
  [configuration](configuration.md#multi-process-mode)): one scrape merges every worker; each
  metric says how.
- **Exemplars.** While query spans are recorded (see `tracer_provider` in the
  [configuration](configuration.md)), `e6data_query_duration_seconds` carries per bucket the
  trace and span id of a recent query; Prometheus sees them when it scrapes in the OpenMetrics
  format.
- **OpenTelemetry export** needs an SDK meter provider (passed as `meter_provider`, or set
  globally). The watcher, runtime and pool instruments are registered only if that provider
  exists when `instrument()` runs; the others also follow a global provider set later.
"""


def render() -> str:
    """The whole of docs/metrics.md."""
    notes = _notes()
    label_info = labels()
    groups = {key: [m for m in M.ALL if group_of(m) == key] for key, _ in GROUPS}
    out = [HEADER]
    out += ["## Summary", ""]
    out += ["| Prometheus | type | labels | OpenTelemetry | unit |", "|---|---|---|---|---|"]
    for key, _title in GROUPS:
        for m in groups[key]:
            otel = f"`{m.otel_name}`" if otel_exported(m) else "—"
            prom = f"[`{_heading(m)}`](#{_heading(m)})"
            if not prometheus_exported(m):
                prom += " (not on `/metrics`)"
            out.append(f"| {prom} | {m.kind} | {_code(m.labels) or '—'} | {otel} | `{m.unit}` |")
    out.append("")
    for key, title in GROUPS:
        out += [f"## {title}", ""]
        for m in groups[key]:
            out += _metric_section(m, notes)
    out += ["## Label values", ""]
    order = list(dict.fromkeys(n for m in M.ALL for n in m.labels))  # first use in the table
    for name in order:
        out += _label_section(name, label_info[name])
    return "\n".join(out).rstrip("\n") + "\n"


# -- command line -------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="regen-docs", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 if stale")
    ap.add_argument(
        "--root", type=Path, default=ROOT, help="tree to write or check (default: this repository)"
    )
    args = ap.parse_args(argv)
    path = args.root / OUTPUT
    text = render()
    current = path.read_text(encoding="utf-8") if path.exists() else None
    if current == text:
        return 0
    if args.check:
        print(f"out of date (run scripts/regen-docs): {OUTPUT}", file=sys.stderr)
        return 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
