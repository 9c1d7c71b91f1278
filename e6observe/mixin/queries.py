"""PromQL for the dashboards and alert rules, kept apart from panel layout.

Every metric name is taken from ``e6observe.metrics`` through :func:`series`, which refuses a
name the exposition does not show, so a renamed metric breaks generation instead of silently
producing an empty panel. Queries are functions of a label-matcher string: the dashboards pass
their template variables (:data:`DASHBOARD_SELECTOR`), the alert rules pass ``Config.selector``.
"""

from __future__ import annotations

from e6observe import metrics as M

#: Label matchers every dashboard query carries: the cluster/namespace/job/instance/pod
#: template variables (``e6observe export --cluster-label`` renames the cluster label).
DASHBOARD_SELECTOR = (
    'cluster=~"$cluster", namespace=~"$namespace", job=~"$job", instance=~"$instance", pod=~"$pod"'
)
#: Grafana's interval for rate windows; the live test substitutes a concrete duration.
RATE = "$__rate_interval"
#: Labels drawn per client on the dashboards (the variables' labels).
CLIENT = "cluster, namespace, job, instance, pod"
#: Labels of one population of clients (the first three variables): what the fleet views
#: aggregate by, and all the labels a per-population recording keeps.
POPULATION = "cluster, namespace, job"
#: The matchers a per-population recorded series can answer: the population variables only. A
#: chosen instance or pod narrows nothing there (the series has no such label); the panel shows
#: that pod's population instead of no data.
POPULATION_SELECTOR = 'cluster=~"$cluster", namespace=~"$namespace", job=~"$job"'
QUANTILES = (0.5, 0.95, 0.99)


def name(spec: M.MetricSpec, suffix: str = "") -> str:
    """The exposed series name of ``spec`` with ``suffix`` (``_total``, ``_bucket``...)."""
    full = spec.prom_name + suffix
    if full not in spec.exposed_names:
        raise ValueError(f"{full} is not exposed by {spec.prom_name} ({spec.exposed_names})")
    return full


def series(spec: M.MetricSpec, suffix: str = "", *matchers: str) -> str:
    """``name{m1, m2}`` with empty matchers dropped (``name`` alone if none remain)."""
    parts = [m for m in matchers if m]
    base = name(spec, suffix)
    return f"{base}{{{', '.join(parts)}}}" if parts else base


def counter(spec: M.MetricSpec, *matchers: str) -> str:
    return series(spec, "_total", *matchers)


def gauge(spec: M.MetricSpec, *matchers: str) -> str:
    return series(spec, "", *matchers)


def only_e6observe(expr: str, sel: str, on: str = CLIENT) -> str:
    """Keep ``expr`` only for targets that export e6observe (process_* names are generic)."""
    return f"{expr} and on ({on}) {gauge(M.BUILD_INFO, sel)}"


def top_clients(k: int, expr: str) -> str:
    """At most ``k`` series of a per-client ``expr`` at each step: the ``k`` highest. At 1 000
    pods one line per client is 1 000 to 3 000 series per refresh (over a second to answer,
    and no legible panel); with a few clients selected (a pod, an instance) each is drawn."""
    return f"topk({k}, {expr})"


def zero_per_client(sel: str, by: str = CLIENT) -> str:
    """A 0 series per e6observe client: ``... or`` this draws "no errors" as 0, not "No data"."""
    return f"0 * group by ({by}) ({gauge(M.BUILD_INFO, sel)})"


# --- blue/green --------------------------------------------------------------------------------
def active_strategy_code(sel: str, by: str = CLIENT) -> str:
    """Per client: 0 none, 1 blue, 2 green, 3 invalid (value mappings name them)."""
    # Each colour's series is 0 or 1; scaling it by the colour's code and taking the maximum
    # per client yields the code of the one active colour (0 when none is).
    codes = (("blue", 1), ("green", 2), ("invalid", 3))
    terms = [f"{k} * " + gauge(M.STRATEGY_ACTIVE, sel, 'strategy="' + s + '"') for s, k in codes]
    return f"max by ({by}) ({' or '.join(terms)})"


def clients_per_strategy(sel: str) -> str:
    active = gauge(M.STRATEGY_ACTIVE, sel, 'strategy=~"blue|green"')
    return f"count by (strategy) ({active} == 1)"


def active_colours(sel: str, by: str) -> str:
    """How many colours the clients of each population are on (2 = split brain)."""
    active = gauge(M.STRATEGY_ACTIVE, sel, 'strategy=~"blue|green"')
    return f"count by ({by}) (count by ({by}, strategy) ({active} == 1))"


def switches(sel: str, window: str, by: str) -> str:
    return f"sum by ({by}) (increase({counter(M.SWITCHES, sel)}[{window}]))"


def pending(sel: str) -> str:
    return f"sum by (strategy) ({gauge(M.STRATEGY_PENDING, sel)})"


def pending_age(sel: str, by: str = CLIENT) -> str:
    return f"max by ({by}) ({gauge(M.PENDING_AGE, sel)})"


def drain_quantile(q: float, sel: str, window: str) -> str:
    bucket = series(M.SWITCH_DRAIN, "_bucket", sel)
    return f"histogram_quantile({q}, sum by (le) (increase({bucket}[{window}])))"


def drain_mean(sel: str, window: str, by: str = CLIENT) -> str:
    s = series(M.SWITCH_DRAIN, "_sum", sel)
    c = series(M.SWITCH_DRAIN, "_count", sel)
    return f"sum by ({by}) (increase({s}[{window}])) / sum by ({by}) (increase({c}[{window}])) > 0"


def mismatch_rate(sel: str, window: str, by: str = "strategy, method") -> str:
    return f"sum by ({by}) (rate({counter(M.MISMATCHES, sel)}[{window}]))"


def mismatch_ratio(sel: str, window: str, by: str) -> str:
    """456 mismatches per RPC made (the connector's documentation names 5 % as the limit)."""
    rpcs = series(M.RPC_DURATION, "_count", sel)
    return (
        f"sum by ({by}) (rate({counter(M.MISMATCHES, sel)}[{window}]))"
        f" / sum by ({by}) (rate({rpcs}[{window}]))"
    )


def interrupted(sel: str, window: str, by: str = CLIENT) -> str:
    count = series(M.QUERY_DURATION, "_count", sel, 'outcome="switch_interrupted"')
    return f"sum by ({by}) (increase({count}[{window}]))"


# --- queries -----------------------------------------------------------------------------------
def query_rate(sel: str, window: str, by: str = "strategy") -> str:
    return f"sum by ({by}) (rate({series(M.QUERY_DURATION, '_count', sel)}[{window}]))"


def query_failures(sel: str, window: str, by: str = "strategy, outcome") -> str:
    # ``resumed``: the query succeeded after waiting for an auto-resume (not a failure).
    count = series(M.QUERY_DURATION, "_count", sel, 'outcome!~"ok|resumed"')
    return f"sum by ({by}) (rate({count}[{window}]))"


def query_error_ratio(sel: str, window: str, by: str) -> str:
    errors = series(M.QUERY_DURATION, "_count", sel, 'outcome="error"')
    total = series(M.QUERY_DURATION, "_count", sel)
    return f"sum by ({by}) (rate({errors}[{window}])) / sum by ({by}) (rate({total}[{window}]))"


def query_latency(q: float, sel: str, window: str, by: str = "strategy") -> str:
    bucket = series(M.QUERY_DURATION, "_bucket", sel)
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({bucket}[{window}])))"


def queries_in_flight(sel: str, by: str = "strategy") -> str:
    return f"sum by ({by}) ({gauge(M.QUERIES_IN_FLIGHT, sel)})"


# --- auto-resume and the connector's other caches ----------------------------------------------
def resumes(sel: str, window: str, by: str = "outcome") -> str:
    return f"sum by ({by}) (increase({counter(M.CLUSTER_RESUMES, sel)}[{window}]))"


def resumes_failed(sel: str, window: str, by: str) -> str:
    failed = counter(M.CLUSTER_RESUMES, sel, 'outcome=~"failed|timeout"')
    return f"sum by ({by}) (increase({failed}[{window}]))"


def resume_mean(sel: str, window: str, by: str = CLIENT) -> str:
    s = series(M.CLUSTER_RESUME_DURATION, "_sum", sel)
    c = series(M.CLUSTER_RESUME_DURATION, "_count", sel)
    return f"sum by ({by}) (increase({s}[{window}])) / sum by ({by}) (increase({c}[{window}])) > 0"


def resume_quantile(q: float, sel: str, window: str) -> str:
    bucket = series(M.CLUSTER_RESUME_DURATION, "_bucket", sel)
    return f"histogram_quantile({q}, sum by (le) (increase({bucket}[{window}])))"


def resumes_slower_than(seconds: str, sel: str, window: str, by: str) -> str:
    """Resumes that ended ok after more than ``seconds`` (a bucket boundary) in ``window``."""
    count = series(M.CLUSTER_RESUME_DURATION, "_count", sel, 'outcome="ok"')
    under = series(M.CLUSTER_RESUME_DURATION, "_bucket", sel, 'outcome="ok"', f'le="{seconds}"')
    return f"sum by ({by}) (increase({count}[{window}])) - sum by ({by}) (increase({under}[{window}]))"


def cluster_status(sel: str, by: str = CLIENT) -> str:
    """Per client: the last seen status as a code (value mappings name it)."""
    codes = (("active", 1), ("suspended", 2), ("resuming", 3), ("failed", 4), ("other", 5))
    terms = [f"{k} * " + gauge(M.CLUSTER_STATUS, sel, 'status="' + s + '"') for s, k in codes]
    return f"max by ({by}) ({' or '.join(terms)})"


def resumed_queries(sel: str, window: str, by: str = "strategy") -> str:
    count = series(M.QUERY_DURATION, "_count", sel, 'outcome="resumed"')
    return f"sum by ({by}) (increase({count}[{window}]))"


def scoped_switches(sel: str, window: str, by: str = "from, to, scope") -> str:
    return f"sum by ({by}) (increase({counter(M.SCOPED_SWITCHES, sel)}[{window}]))"


def cache_split(sel: str, by: str = CLIENT) -> str:
    return f"max by ({by}) ({gauge(M.CACHE_SPLIT, sel)})"


def rejected(sel: str, window: str, by: str = "reason") -> str:
    return f"sum by ({by}) (increase({counter(M.STRATEGY_REJECTED, sel)}[{window}]))"


# --- RPCs and runtime --------------------------------------------------------------------------
def rpc_heatmap(sel: str, window: str) -> str:
    bucket = series(M.RPC_DURATION, "_bucket", sel, 'method=~"$method"')
    return f"sum by (le) (rate({bucket}[{window}]))"


def rpc_latency(q: float, sel: str, window: str, by: str = "method") -> str:
    bucket = series(M.RPC_DURATION, "_bucket", sel)
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({bucket}[{window}])))"


def rpc_rate_by_code(sel: str, window: str) -> str:
    count = series(M.RPC_DURATION, "_count", sel)
    return f"sum by (method, code) (rate({count}[{window}]))"


def retries(sel: str, window: str) -> str:
    return f"sum by (reason) (rate({counter(M.RETRIES, sel)}[{window}]))"


def process_gauge(spec: M.MetricSpec, sel: str) -> str:
    return only_e6observe(f"sum by ({CLIENT}) ({gauge(spec, sel)})", sel)


def process_rate(spec: M.MetricSpec, sel: str, window: str, extra_by: str = "") -> str:
    """Per client (and ``extra_by``): the client labels must survive for the join."""
    by = f"{CLIENT}, {extra_by}" if extra_by else CLIENT
    return only_e6observe(f"sum by ({by}) (rate({counter(spec, sel)}[{window}]))", sel)


def heartbeat_age(sel: str, by: str = CLIENT) -> str:
    return f"max by ({by}) (time() - {gauge(M.WATCHER_LAST_RUN, sel)})"


def counted_errors(spec: M.MetricSpec, label: str, sel: str, window: str) -> str:
    """Per client and ``label``, drawn as 0 for clients that never counted one."""
    inc = f"sum by ({CLIENT}, {label}) (increase({counter(spec, sel)}[{window}]))"
    return f"{inc} or {zero_per_client(sel)}"


def pool_connections(sel: str) -> str:
    return f"sum by ({CLIENT}, pool, state) ({gauge(M.POOL_CONNECTIONS, sel)})"


def pool_wait(q: float, sel: str, window: str) -> str:
    bucket = series(M.POOL_WAIT_TIME, "_bucket", sel)
    return f"histogram_quantile({q}, sum by (pool, le) (rate({bucket}[{window}])))"
