"""Live proof: the dashboards and alert rules against a real Prometheus and Alertmanager.

One module-scoped setup (about a minute) shared by every assertion:

* the blue/green simulator in this process;
* two instrumented application processes (``tests/live/e6app.py``) scraped by Prometheus every
  second: **A** runs a steady workload (worker threads and a ``ConnectionPool``), **B** runs
  one query and then stays idle, like a real process with no traffic;
* Debian's ``prometheus`` (rules generated from ``e6observe.mixin.alerts`` with shortened windows)
  sending to Debian's ``prometheus-alertmanager``, each on a free loopback port with a temp dir;
* four flips: announced (A drains and follows; idle B stays on blue: split brain), abrupt with a
  long query in flight (it fails mid-switch, 456s, retries), announced, abrupt (A flaps).

Then every PromQL expression of every dashboard panel and annotation (template variables filled
in) must return data from Prometheus, and the flip alerts and split brain must have reached
Alertmanager (``/api/v2/alerts``).
"""

from __future__ import annotations

import json
import math
import os
import queue
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest
import requests
import yaml
from helpers import free_port, need_binary
from helpers import wait_for as poll

from e6observe.metrics import exposed_series_names
from e6observe.sim import Simulator

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # dashboards/ is a source tree, not an installed package
    sys.path.insert(0, str(ROOT))

from e6observe.mixin.alerts import render_rules  # noqa: E402
from e6observe.mixin.config import DEFAULT  # noqa: E402
from e6observe.mixin.records import render_records  # noqa: E402

pytestmark = [pytest.mark.live, pytest.mark.timeout(300)]

APP = Path(__file__).with_name("e6app.py")
DASHBOARDS = sorted((ROOT / "dashboards" / "json").glob("*.json"))
JOB = "e6data-live"
RATE_WINDOW = "10s"  # what Grafana's $__rate_interval would be at a 1 s scrape interval
#: The committed config with windows short enough for a one-minute test.
LIVE_CONFIG = DEFAULT.with_(
    switch_window="30s",
    flapping_window="1m",
    flapping_for="0m",
    split_brain_for="5s",
    record_window=RATE_WINDOW,
    record_interval="1s",
)
REQUIRED_ALERTS = ("E6dataStrategySwitched", "E6dataStrategyFlapping", "E6dataStrategySplitBrain")


def wait_for_answer(what: str, fn: Callable[[], Any], timeout: float, interval: float = 0.25) -> Any:
    """Poll ``fn`` until it answers something truthy and return that answer (request errors
    while a server starts are retried); a timeout names ``what`` and the last answer.
    helpers.wait_for is the one for plain conditions."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except (requests.RequestException, ValueError, KeyError) as e:
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class App:
    """One instrumented application process, driven over stdin/stdout JSON lines."""

    def __init__(self, name: str, sim_port: int, metrics_port: int, log: Path, idle: bool) -> None:
        self.name, self.metrics_port = name, metrics_port
        self.instance = f"127.0.0.1:{metrics_port}"
        args = [
            sys.executable,
            str(APP),
            "--sim-port",
            str(sim_port),
            "--metrics-port",
            str(metrics_port),
        ] + (["--idle"] if idle else [])
        self._err = log.open("w")
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, text=True, cwd=ROOT
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                pass

    def send(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()

    def expect(self, key: str, timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise AssertionError(f"app {self.name}: no {key!r} line (exit {self.proc.poll()})")
            try:
                msg = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if key in msg:
                return msg

    def active(self) -> Optional[str]:
        self.send("state")
        return self.expect("active").get("active")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._err.close()


class Server:
    """A Prometheus or Alertmanager process on a loopback port."""

    def __init__(self, name: str, args: list[str], port: int, log: Path) -> None:
        self.name, self.url = name, f"http://127.0.0.1:{port}"
        self._log = log.open("w")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        wait_for_answer(f"{name} ready", self._ready, 30)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited {self.proc.returncode}; see its log")
        return requests.get(self.url + "/-/ready", timeout=2).status_code == 200

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


@dataclass
class Stack:
    prom: Server
    am: Server
    a: App
    b: App
    start: float = 0.0
    end: float = 0.0
    #: First sighting of each alert at Alertmanager: name -> the alert as /api/v2/alerts gave it.
    received: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    timeline: list[tuple[float, str]] = field(default_factory=list)

    def query(
        self, expr: str, start: Optional[float] = None, end: Optional[float] = None
    ) -> list[dict[str, Any]]:
        r = requests.get(
            self.prom.url + "/api/v1/query_range",
            timeout=10,
            params={"query": expr, "start": start or self.start, "end": end or self.end, "step": "1"},
        )
        body = r.json()
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus refused {expr!r}: {body}")
        return list(body["data"]["result"])

    def poll_alertmanager(self) -> dict[str, list[dict[str, Any]]]:
        r = requests.get(self.am.url + "/api/v2/alerts", timeout=5, params={"active": "true"})
        for alert in r.json():
            name = alert["labels"]["alertname"]
            seen = self.received.setdefault(name, [])
            if alert["labels"] not in [a["labels"] for a in seen]:
                seen.append(alert)
        return self.received

    def note(self, what: str) -> None:
        self.timeline.append((round(time.time() - self.start, 1), what))


def _binary(*names: str) -> str:
    return need_binary(
        *names,
        install="apt-get install prometheus prometheus-alertmanager "
        "(./run test installs them when run as root)",
    )


def _flip_announced(sim: Simulator, app: App, stack: Stack, must_drain: bool) -> None:
    """Announce a switch; complete it once A has applied it (a graceful drain), or after two
    seconds if A cannot: a query id the connector leaked when an abrupt switch cut a query off
    stays in its query map and keeps the switch pending. A then follows through the 456 path."""
    target = sim.announce()
    stack.note(f"announced {target}")
    applied = poll(lambda: app.active() == target, 20 if must_drain else 2, 0.2)
    if must_drain and not applied:
        metrics = requests.get(f"http://{app.instance}/metrics", timeout=5).text
        raise AssertionError(
            f"A did not apply {target}; simulator {sim.counters()}; A's state: "
            + " ".join(line for line in metrics.splitlines() if line.startswith("e6data_strategy"))
        )
    stack.note(f"A applied {target}" if applied else f"A still pending {target}")
    sim.complete(drain_wait=5 if applied else 0)
    wait_for_answer(f"app A to follow to {target}", lambda: app.active() == target, 20, 0.2)
    stack.note(f"cluster completed {target}")


def _flip_abrupt_mid_query(sim: Simulator, app: App, stack: Stack) -> None:
    app.send("long")
    app.expect("long")  # {"long": "started"}: the long query's RPCs are on their way
    time.sleep(0.8)  # inside its executeStatement (2 s on the simulator)
    to = sim.flip(announce=False)
    outcome = app.expect("long", timeout=20)["long"]
    stack.note(f"abrupt flip to {to}; the long query across it: {outcome}")
    wait_for_answer(f"app A to follow to {to}", lambda: app.active() == to, 20, 0.2)


def _suspend_and_resume(sim: Simulator, stack: Stack) -> None:
    """Suspend the cluster; A's workers get 503s, reconnect, and the connector resumes it."""
    before = sim.counters()["resumes"]
    sim.set_resume(0.5)
    sim.suspend()
    stack.note("cluster suspended")
    wait_for_answer(
        "the connector to resume the cluster",
        lambda: sim.counters()["resumes"] > before and not sim.suspended,
        30,
        0.2,
    )
    stack.note("cluster resumed")


def _wait_alerts(stack: Stack, names: tuple[str, ...], timeout: float) -> None:
    wait_for_answer(
        f"alerts {names} at Alertmanager",
        lambda: all(n in stack.poll_alertmanager() for n in names),
        timeout,
        0.5,
    )
    stack.note(f"alertmanager has {', '.join(names)}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus = _binary("prometheus")
    alertmanager = _binary("prometheus-alertmanager", "alertmanager")
    tmp = tmp_path_factory.mktemp("live")
    sim = Simulator(port=0, latency_ms=2).start()
    started: list[Any] = []
    try:
        a = App("A", sim.port, free_port(), tmp / "app-a.log", idle=False)
        started.append(a)
        b = App("B", sim.port, free_port(), tmp / "app-b.log", idle=True)
        started.append(b)
        assert a.expect("ready")["active"] == "blue" and b.expect("ready")["active"] == "blue"

        (tmp / "rules.yaml").write_text(render_rules(LIVE_CONFIG), encoding="utf-8")
        # The recording rules the dashboards read (e6observe/mixin/records.py).
        (tmp / "records.yaml").write_text(render_records(LIVE_CONFIG), encoding="utf-8")
        am_port, prom_port = free_port(), free_port()
        (tmp / "alertmanager.yml").write_text(
            "route:\n  receiver: sink\n  group_by: [alertname]\n  group_wait: 1s\n"
            "  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: sink\n",
            encoding="utf-8",
        )
        am = Server(
            "alertmanager",
            [
                alertmanager,
                f"--config.file={tmp / 'alertmanager.yml'}",
                f"--storage.path={tmp / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",
                "--log.level=warn",
            ],
            am_port,
            tmp / "alertmanager.log",
        )
        started.append(am)
        (tmp / "prometheus.yml").write_text(
            json.dumps(
                {
                    "global": {
                        "scrape_interval": "1s",
                        "scrape_timeout": "900ms",
                        "evaluation_interval": "1s",
                    },
                    "rule_files": [str(tmp / "rules.yaml"), str(tmp / "records.yaml")],
                    "alerting": {
                        "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]
                    },
                    "scrape_configs": [
                        {"job_name": JOB, "static_configs": [{"targets": [a.instance, b.instance]}]}
                    ],
                }
            ),
            encoding="utf-8",
        )
        prom = Server(
            "prometheus",
            [
                prometheus,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'prom-data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--log.level=warn",
            ],
            prom_port,
            tmp / "prometheus.log",
        )
        started.append(prom)

        st = Stack(prom=prom, am=am, a=a, b=b, start=time.time())
        wait_for_answer(
            "both apps scraped",
            lambda: len(st.query(f'up{{job="{JOB}"}} == 1', time.time(), time.time())) == 2,
            30,
        )
        st.note("both targets up")
        time.sleep(4)  # a few samples on blue before anything happens

        _flip_announced(sim, a, st, must_drain=True)  # blue -> green; B idle on blue: split brain
        _wait_alerts(st, ("E6dataStrategySwitched", "E6dataStrategySplitBrain"), 60)
        _flip_abrupt_mid_query(sim, a, st)  # green -> blue
        time.sleep(2)
        _suspend_and_resume(sim, st)  # auto-resume (issue 14): the resume panels have data
        _flip_announced(sim, a, st, must_drain=False)  # blue -> green
        _flip_abrupt_mid_query(sim, a, st)  # green -> blue
        _wait_alerts(st, ("E6dataStrategyFlapping",), 30)
        b.send("query")
        assert b.expect("query")["query"] == "ok"
        time.sleep(3)  # the last samples in
        st.end = time.time()
        st.poll_alertmanager()
        st.note("done")
        yield st
    except BaseException:
        for log in sorted(tmp.glob("*.log")):
            sys.stderr.write(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}\n")
        raise
    finally:
        for proc in reversed(started):
            proc.stop()
        sim.stop()


# --- the dashboards ---------------------------------------------------------------------------
def fill(expr: str, seconds: float) -> str:
    """A dashboard expression with Grafana's variables replaced as Grafana would."""
    values = {
        "__rate_interval": RATE_WINDOW,
        "__range": f"{int(seconds) + 1}s",
        "job": JOB,
        "instance": ".*",
        "pod": ".*",
        "method": ".*",
        "cluster": ".*",
        "namespace": ".*",
    }
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], expr)


def dashboard_queries() -> Iterator[tuple[str, str]]:
    for path in DASHBOARDS:
        d = json.loads(path.read_text(encoding="utf-8"))
        for ann in d.get("annotations", {}).get("list", []):
            if ann.get("expr"):
                yield f"{d['title']} / annotation {ann['name']}", ann["expr"]
        for p in d["panels"]:
            for t in p.get("targets", []):
                yield f"{d['title']} / {p['title']} / {t['refId']}", t["expr"]


def finite_values(result: list[dict[str, Any]]) -> list[float]:
    return [float(v) for s in result for _, v in s["values"] if math.isfinite(float(v))]


def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    queries = list(dashboard_queries())
    assert len(queries) >= 30
    empty = []
    for where, expr in queries:
        result = stack.query(fill(expr, stack.end - stack.start))
        if not finite_values(result):
            empty.append(f"{where}: {expr}")
    assert empty == [], "panel queries without data:\n" + "\n".join(empty) + f"\ntimeline: {stack.timeline}"


def test_the_dashboard_variables_list_the_clients(stack: Stack) -> None:
    def label_values(label: str, match: str) -> list[str]:
        r = requests.get(
            f"{stack.prom.url}/api/v1/label/{label}/values",
            timeout=10,
            params={"match[]": match, "start": stack.start, "end": stack.end},
        )
        return list(r.json()["data"])

    assert label_values("job", "e6observe_build_info") == [JOB]
    assert sorted(label_values("instance", f'e6observe_build_info{{job="{JOB}"}}')) == sorted(
        [stack.a.instance, stack.b.instance]
    )
    methods = label_values("method", f'e6data_rpc_duration_seconds_count{{job="{JOB}"}}')
    assert {"authenticate", "prepareStatement", "clearOrCancelQuery"} <= set(methods)


def panel_expr(title: str, ref: str = "A") -> str:
    for where, expr in dashboard_queries():
        if where.endswith(f"/ {title} / {ref}"):
            return fill(expr, 600)
    raise KeyError(title)


def test_the_panels_show_who_flipped_and_what_it_cost(stack: Stack) -> None:
    per_client = {
        s["metric"]["instance"]: {float(v) for _, v in s["values"]}
        for s in stack.query(panel_expr("Active strategy per client"))
    }
    assert per_client[stack.a.instance] >= {1.0, 2.0}  # A went blue -> green -> ...
    assert per_client[stack.b.instance] == {1.0}  # idle B never left blue
    causes = {
        s["metric"]["cause"]
        for s in stack.query(panel_expr("Switches"))
        if max(finite_values([s]), default=0) > 0
    }
    assert causes == {"announced", "mismatch"}
    assert max(finite_values(stack.query(panel_expr("Queries failed mid-switch")))) > 0
    assert max(finite_values(stack.query(panel_expr("Strategy mismatches (456)")))) > 0
    drains = finite_values(stack.query(panel_expr("Drain time", "A")))
    assert drains and all(d > 0 for d in drains)
    assert max(finite_values(stack.query(panel_expr("Retries")))) > 0


def test_one_chosen_client_keeps_its_lines(stack: Stack) -> None:
    # With one instance chosen (as a user drilling into a pod would), the per-client panels,
    # bounded by topk at fleet scale, draw that client; the panels fed by per-population
    # recordings (which carry no instance label) show its population instead of no data.
    def one(title: str, ref: str = "A") -> list[dict[str, Any]]:
        expr = panel_expr(title, ref).replace('instance=~".*"', f'instance=~"{stack.a.instance}"')
        return stack.query(expr)

    for title in ("Memory", "Threads", "Open connections", "Watcher heartbeat age"):
        got = {s["metric"].get("instance") for s in one(title)}
        assert got == {stack.a.instance}, title
    both = {s["metric"].get("instance") for s in stack.query(panel_expr("Memory"))}
    assert both == {stack.a.instance, stack.b.instance}  # topk(10) of two clients: both drawn
    for title, ref in (("Query latency", "A"), ("Drain time", "B"), ("RPC p95 by method", "A")):
        assert finite_values(one(title, ref)), title


# --- the alerts -------------------------------------------------------------------------------
def test_flip_and_split_brain_alerts_reach_alertmanager(stack: Stack) -> None:
    got = stack.received
    assert set(REQUIRED_ALERTS) <= set(got), (sorted(got), stack.timeline)

    switched = [a["labels"] for a in got["E6dataStrategySwitched"]]
    assert {"alertname": "E6dataStrategySwitched", "severity": "info", "job": JOB, "to": "green"} in switched

    [split] = got["E6dataStrategySplitBrain"]
    assert split["labels"] == {"alertname": "E6dataStrategySplitBrain", "severity": "critical", "job": JOB}
    assert split["annotations"]["description"] == (
        f"Clients of job={JOB} have been routing to both blue and green for more than 5s: "
        "some clients did not follow a switch."
    )
    assert split["annotations"]["runbook_url"].endswith("/docs/runbook.md#e6datastrategysplitbrain")

    flapping = [a for a in got["E6dataStrategyFlapping"] if a["labels"].get("instance") == stack.a.instance]
    assert flapping, got["E6dataStrategyFlapping"]
    assert flapping[0]["labels"]["severity"] == "warning"
    assert all(
        a["labels"].get("instance") != stack.b.instance for a in got["E6dataStrategyFlapping"]
    )  # the idle client did not flap
    for alerts in got.values():
        for a in alerts:
            assert set(a["annotations"]) == {"summary", "description", "runbook_url"}
            assert "{{" not in a["annotations"]["description"]  # templates were expanded


def test_prometheus_evaluated_the_same_alerts(stack: Stack) -> None:
    fired = {s["metric"]["alertname"] for s in stack.query('ALERTS{alertstate="firing"}')}
    assert set(REQUIRED_ALERTS) <= fired


# --- the contract, from the other side --------------------------------------------------------
def test_every_scraped_series_is_in_the_metric_table(stack: Stack) -> None:
    r = requests.get(
        f"{stack.prom.url}/api/v1/label/__name__/values",
        timeout=10,
        params={"match[]": f'{{job="{JOB}"}}', "start": stack.start, "end": stack.end},
    )
    names = set(r.json()["data"])
    # Series Prometheus writes itself: target health, scrape stats, alert state, and the
    # recording rules' series (records.yaml).
    recorded = {
        r["record"] for g in yaml.safe_load(render_records(LIVE_CONFIG))["groups"] for r in g["rules"]
    }
    prometheus_own = {
        n
        for n in names
        if n in ("up", "ALERTS", "ALERTS_FOR_STATE") or n.startswith("scrape_") or n in recorded
    }
    assert {"e6data_strategy_active", "e6observe_build_info"} <= names
    assert names - prometheus_own - exposed_series_names() == set()


if os.environ.get("E6OBSERVE_LIVE_DEBUG"):  # pragma: no cover - manual runs
    print(LIVE_CONFIG)
