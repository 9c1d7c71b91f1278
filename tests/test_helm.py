"""The Helm chart: linted by Helm's own library, rendered offline, objects validated.

Helm's Go library comes in two Python packages that need Python >= 3.12, so they live in
``.venv-tools`` (``scripts/tools-venv.txt``; ``./run test`` builds it) and this file runs
itself there as a script (``python tests/test_helm.py``) to produce one JSON report:

* ``helm-sdkpy`` -- ``Lint`` of the chart (its only chart-checking action; it has no template
  action);
* ``helm-python-sdk`` -- ``Chart.render`` (``helm template``, no cluster) and ``lint`` with
  values, for the default values, every ``ci/*-values.yaml`` and some invalid values;
* ``kubernetes-validate`` -- the rendered core objects against the Kubernetes OpenAPI schemas
  it ships (strict: unknown fields are errors), for an old and the newest supported version;
* ``cloudcoil-models-prometheus-operator`` -- ServiceMonitor, PodMonitor and PrometheusRule
  against models generated from prometheus-operator's CRDs (required fields, enums, duration
  patterns), plus a round trip that catches fields the CRD does not know.

The pytest side (any Python) asserts on that report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "e6observe"
TOOLS_PY = ROOT / ".venv-tools" / "bin" / "python"
FEATURES = ("prometheusrule", "dashboards", "servicemonitor", "podmonitor", "prober", "alertoverrides")
K8S_VERSIONS = ("1.27.0", "latest")
CRD_KINDS = ("ServiceMonitor", "PodMonitor", "PrometheusRule")
RELEASE, NAMESPACE = "shop", "monitoring"

#: Values that must be refused, and a fragment of the reason.
INVALID: dict[str, tuple[dict[str, Any], str]] = {
    "password-in-values": (
        {"prober": {"enabled": False, "credentials": {"password": "x"}}},
        "additional properties 'password' not allowed",
    ),
    "unknown-top-level-key": (
        {"serviceMonitr": {"enabled": True}},
        "additional properties 'serviceMonitr' not allowed",
    ),
    "bad-interval": (
        {
            "serviceMonitor": {
                "enabled": True,
                "interval": "30 seconds",
                "selector": {"matchLabels": {"a": "b"}},
            }
        },
        "interval",
    ),
    "unknown-alert": ({"prometheusRule": {"enabled": True, "disabledAlerts": ["Flap"]}}, "disabledAlerts"),
    "threshold-on-alert-without-one": (
        {"prometheusRule": {"enabled": True, "alerts": {"E6dataStrategySplitBrain": {"threshold": 3}}}},
        "this alert has no threshold",
    ),
    "override-of-unknown-alert": (
        {"prometheusRule": {"enabled": True, "alerts": {"E6dataNoSuchAlert": {"for": "1m"}}}},
        "no such alert",
    ),
    "bad-override-for": (
        {"prometheusRule": {"enabled": True, "alerts": {"E6dataQueryLatencyHigh": {"for": "soon"}}}},
        "for",
    ),
    "prober-without-host": (
        {"prober": {"enabled": True, "image": {"repository": "r"}, "credentials": {"existingSecret": "s"}}},
        "prober.target.host is required",
    ),
    "prober-without-secret": (
        {"prober": {"enabled": True, "image": {"repository": "r"}, "target": {"host": "h"}}},
        "prober.credentials.existingSecret is required",
    ),
    "prober-without-image": (
        {"prober": {"enabled": True, "target": {"host": "h"}, "credentials": {"existingSecret": "s"}}},
        "prober.image.repository is required",
    ),
    "servicemonitor-without-selector": (
        {"serviceMonitor": {"enabled": True}},
        "serviceMonitor.selector is required",
    ),
    "podmonitor-without-selector": ({"podMonitor": {"enabled": True}}, "podMonitor.selector is required"),
}


# =============================================================================================
# Tool side: runs under .venv-tools (Python 3.12) as `python tests/test_helm.py`.
# =============================================================================================
def _validate_core(obj: dict[str, Any]) -> list[str]:
    import kubernetes_validate as kv

    errors = []
    for version in K8S_VERSIONS:
        v = kv.latest_version() if version == "latest" else version
        try:
            kv.validate(obj, v, strict=True)
        except kv.ValidationError as e:
            errors.append(f"k8s {v}: {e.message} at {list(e.path)}")
        except Exception as e:  # SchemaNotFoundError and friends
            errors.append(f"k8s {v}: {type(e).__name__}: {e}")
    return errors


def _validate_crd(obj: dict[str, Any]) -> list[str]:
    import pydantic
    from cloudcoil.models.prometheus_operator import v1

    model = getattr(v1, obj["kind"])
    try:
        parsed = model.model_validate(obj)
    except pydantic.ValidationError as e:
        return [f"{obj['kind']}: {err['loc']}: {err['msg']}" for err in e.errors()]
    # Pydantic drops fields it does not know: anything lost in the round trip is unknown to
    # the CRD (a typo such as `scrapeTimout` would silently do nothing in a cluster).
    back = parsed.model_dump(by_alias=True, exclude_none=True, mode="json")
    lost = _missing(obj["spec"], back.get("spec", {}), "spec")
    return [f"{obj['kind']}: field unknown to the CRD: {p}" for p in lost]


def _missing(a: Any, b: Any, path: str) -> list[str]:
    if isinstance(a, dict):
        if not isinstance(b, dict):
            return [path]
        out = []
        for k, v in a.items():
            out += _missing(v, b.get(k), f"{path}.{k}") if k in b else [f"{path}.{k}"]
        return out
    if isinstance(a, list):
        if not isinstance(b, list) or len(a) != len(b):
            return [path]
        return [m for i, (x, y) in enumerate(zip(a, b)) for m in _missing(x, y, f"{path}[{i}]")]
    return []


def _render_case(chart: Any, values: dict[str, Any] | None) -> dict[str, Any]:
    import helm_python as hp
    import yaml

    case: dict[str, Any] = {}
    try:
        rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    except Exception as e:
        case["error"] = f"{type(e).__name__}: {e}"
        return case
    objects = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            case["notes"] = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append(
                    {
                        "template": path,
                        "object": doc,
                        "errors": _validate_crd(doc) if doc.get("kind") in CRD_KINDS else _validate_core(doc),
                    }
                )
    case["objects"] = objects
    case["raw"] = "\n---\n".join(rendered.values())
    report = hp.lint(str(CHART), values, strict=True, namespace=NAMESPACE)
    case["lint"] = {"messages": report.get("messages") or [], "errors": report.get("errors") or []}
    return case


def _selftest() -> list[list[str]]:
    """The validators on broken objects (the pytest side requires each to be caught)."""
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": 1}}
    sm = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "x"},
        "spec": {"selector": {}, "endpoints": [{"port": "m", "scheme": "ftp"}]},
    }
    pr = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "x"},
        "spec": {
            "groups": [
                {"name": "g", "rules": [{"alert": "A", "expr": "up", "for": "5m", "keepFiringFr": "1m"}]}
            ]
        },
    }
    return [_validate_core(cm), _validate_crd(sm), _validate_crd(pr)]


def _tool_main(argv: list[str]) -> int:
    if argv == ["--selftest"]:
        json.dump(_selftest(), sys.stdout)
        return 0
    import asyncio

    import helm_python as hp
    import helm_sdkpy
    import yaml

    out: dict[str, Any] = {"cases": {}, "invalid": {}}
    # helm-sdkpy: Helm's lint on the chart with its own values.
    lint = asyncio.run(helm_sdkpy.Lint(helm_sdkpy.Configuration(namespace=NAMESPACE)).run(str(CHART)))
    out["sdkpy_lint"] = {
        "charts": lint.get("TotalChartsLinted"),
        "severities": [m.get("Severity") for m in lint.get("Messages") or []],
        "errors": lint.get("Errors") or [],
    }
    out["sdkpy_version"] = helm_sdkpy.__version__
    chart = hp.Chart.load(str(CHART))
    out["cases"]["default"] = _render_case(chart, None)
    for f in sorted((CHART / "ci").glob("*-values.yaml")):
        values = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        out["cases"][f.name[: -len("-values.yaml")]] = _render_case(chart, values)
    for name, (values, _) in INVALID.items():
        try:
            chart.render(values, name=RELEASE, namespace=NAMESPACE)
            out["invalid"][name] = None
        except Exception as e:
            out["invalid"][name] = f"{type(e).__name__}: {e}"
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(_tool_main(sys.argv[1:]))


# =============================================================================================
# pytest side
# =============================================================================================
import pytest  # noqa: E402
import yaml  # noqa: E402
from helpers import unavailable  # noqa: E402


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    if not TOOLS_PY.exists():
        unavailable(
            ".venv-tools is missing: ./run test builds it from scripts/tools-venv.txt "
            "(Python 3.12 venv; helm-sdkpy needs >= 3.12)"
        )
    env = dict(os.environ, PYTHONPATH="")
    r = subprocess.run(
        [str(TOOLS_PY), str(Path(__file__))], capture_output=True, text=True, timeout=240, cwd=ROOT, env=env
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def objects(report: dict[str, Any], case: str) -> list[dict[str, Any]]:
    c = report["cases"][case]
    assert "error" not in c, c.get("error")
    return [o["object"] for o in c["objects"]]


def one(report: dict[str, Any], case: str, kind: str) -> dict[str, Any]:
    found = [o for o in objects(report, case) if o["kind"] == kind]
    assert len(found) == 1, f"{case}: {len(found)} {kind}"
    return found[0]


def test_helm_sdkpy_lints_the_chart_without_errors_or_warnings(report: dict[str, Any]) -> None:
    lint = report["sdkpy_lint"]
    assert lint["charts"] == 1 and lint["errors"] == []
    assert all(s < 2 for s in lint["severities"]), lint  # 1 = info ("icon is recommended")


def test_every_feature_has_a_ci_values_file(report: dict[str, Any]) -> None:
    assert sorted(p.name for p in (CHART / "ci").glob("*-values.yaml")) == sorted(
        f"{f}-values.yaml" for f in FEATURES
    )
    assert set(report["cases"]) == {"default", *FEATURES}


@pytest.mark.parametrize("case", ("default", *FEATURES))
def test_lint_with_values_is_clean_and_every_object_validates(report: dict[str, Any], case: str) -> None:
    c = report["cases"][case]
    assert "error" not in c, c.get("error")
    assert c["lint"]["errors"] == []
    assert [m for m in c["lint"]["messages"] if m["severity"] >= 2] == []
    assert c["objects"]
    for o in c["objects"]:
        obj = o["object"]
        assert obj["apiVersion"] and obj["kind"] and obj["metadata"]["name"], o["template"]
        assert o["errors"] == [], (o["template"], o["errors"])
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
    names = [(o["object"]["kind"], o["object"]["metadata"]["name"]) for o in c["objects"]]
    assert len(names) == len(set(names))


def test_the_validators_catch_what_they_claim_to() -> None:
    # The same checks as the report, run on broken objects: they must fail.
    if not TOOLS_PY.exists():
        unavailable(".venv-tools is missing: ./run test builds it from scripts/tools-venv.txt")
    r = subprocess.run(
        [str(TOOLS_PY), str(Path(__file__)), "--selftest"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    core, sm, pr = json.loads(r.stdout)
    assert core and "is not of type" in core[0]
    assert sm and "scheme" in sm[0]
    assert pr == ["PrometheusRule: field unknown to the CRD: spec.groups[0].rules[0].keepFiringFr"]


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_values_are_refused_with_a_reason(report: dict[str, Any], name: str) -> None:
    error = report["invalid"][name]
    assert error is not None, f"{name} rendered"
    assert INVALID[name][1] in error


# --- defaults ---------------------------------------------------------------------------
def test_defaults_render_only_the_dashboards(report: dict[str, Any]) -> None:
    # CRD-dependent objects and the prober are off by default; dashboards need no CRD.
    objs = objects(report, "default")
    assert {o["kind"] for o in objs} == {"ConfigMap"}
    assert len(objs) == 2


# --- dashboards -------------------------------------------------------------------------
@pytest.mark.parametrize("case", ("default", "dashboards"))
def test_dashboard_configmaps_carry_the_generated_json_for_the_sidecar(
    report: dict[str, Any], case: str
) -> None:
    cms = [o for o in objects(report, case) if o["kind"] == "ConfigMap"]
    by_key = {k: (cm, v) for cm in cms for k, v in cm["data"].items()}
    assert set(by_key) == {"e6data-blue-green-overview.json", "e6data-client-runtime.json"}
    for fname, (cm, text) in by_key.items():
        assert text == (ROOT / "dashboards" / "json" / fname).read_text(encoding="utf-8")
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["labels"]["app.kubernetes.io/component"] == "dashboards"
    if case == "dashboards":
        cm = cms[0]
        assert cm["metadata"]["namespace"] == "monitoring"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "e6data"}
        assert cm["metadata"]["labels"]["release"] == "kube-prometheus-stack"


# --- PrometheusRule ---------------------------------------------------------------------
def test_prometheusrule_carries_the_generated_rules(report: dict[str, Any]) -> None:
    pr = one(report, "prometheusrule", "PrometheusRule")
    assert pr["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert pr["metadata"]["annotations"] == {"owner": "data-platform"}
    source = yaml.safe_load((ROOT / "dashboards/rules/e6observe.rules.yaml").read_text())
    group, records = pr["spec"]["groups"]
    [src] = source["groups"]
    # The recording rules the dashboards read, as generated, in a second group.
    [rec] = yaml.safe_load((ROOT / "dashboards/rules/e6observe.records.yaml").read_text())["groups"]
    assert records == rec
    assert group["name"] == src["name"] and group["interval"] == "1m"
    expected = [r for r in src["rules"] if r["alert"] != "E6dataProbeFailing"]
    assert [r["alert"] for r in group["rules"]] == [r["alert"] for r in expected]
    for got, want in zip(group["rules"], expected):
        # Identical rule, plus the additional label; the rule's own severity wins.
        assert got["labels"] == {**want["labels"], "team": "data-platform"}
        assert {k: v for k, v in got.items() if k != "labels"} == {
            k: v for k, v in want.items() if k != "labels"
        }
    # Alert templates pass through Helm untouched.
    assert "{{ $value | humanize }}" in group["rules"][0]["annotations"]["description"]


def test_per_alert_thresholds_for_and_runbook_url_from_values(report: dict[str, Any]) -> None:
    pr = one(report, "alertoverrides", "PrometheusRule")
    rules = {r["alert"]: r for r in pr["spec"]["groups"][0]["rules"]}
    source = {
        r["alert"]: r
        for r in yaml.safe_load((ROOT / "dashboards/rules/e6observe.rules.yaml").read_text())["groups"][0][
            "rules"
        ]
    }
    lat = rules["E6dataQueryLatencyHigh"]
    assert lat["expr"] == source["E6dataQueryLatencyHigh"]["expr"][: -len("> 5")] + "> 2.5"
    assert lat["for"] == "3m"
    assert "(threshold 2.5s)" in lat["annotations"]["description"]
    err = rules["E6dataQueryErrorRateHigh"]
    assert err["expr"].endswith(" > 0.1") and err["for"] == source["E6dataQueryErrorRateHigh"]["for"]
    assert "(threshold 10%)" in err["annotations"]["description"]
    assert rules["E6dataStrategySplitBrain"]["for"] == "20m"
    for name, r in rules.items():
        assert r["annotations"]["runbook_url"] == ("https://runbooks.example/e6observe/#" + name.lower())
        if name not in ("E6dataQueryLatencyHigh", "E6dataQueryErrorRateHigh"):
            assert r["expr"] == source[name]["expr"], name


def test_target_down_is_left_to_kube_prometheus_stack_by_default(report: dict[str, Any]) -> None:
    pr = one(report, "alertoverrides", "PrometheusRule")  # disabledAlerts not set there
    names = [r["alert"] for r in pr["spec"]["groups"][0]["rules"]]
    assert "E6observeTargetDown" not in names and "E6dataStrategyFlapping" in names


def test_chart_metadata_is_complete() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"].startswith(">=")
    assert chart["sources"] and all(s.startswith("https://") for s in chart["sources"])
    assert chart["maintainers"] and all(m.get("name") for m in chart["maintainers"])


# --- scraping ---------------------------------------------------------------------------
def test_servicemonitor_scrapes_the_selected_services(report: dict[str, Any]) -> None:
    sm = one(report, "servicemonitor", "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    spec = sm["spec"]
    assert spec["selector"] == {"matchLabels": {"e6observe.io/scrape": "true"}}
    assert spec["namespaceSelector"] == {"any": True}
    assert spec["jobLabel"] == "app.kubernetes.io/name"
    [ep] = spec["endpoints"]
    assert ep["port"] == "metrics" and ep["path"] == "/metrics" and ep["scheme"] == "https"
    assert (ep["interval"], ep["scrapeTimeout"]) == ("15s", "10s")
    assert ep["basicAuth"]["password"] == {"name": "e6observe-metrics-auth", "key": "password"}


def test_podmonitor_scrapes_the_selected_pods(report: dict[str, Any]) -> None:
    pm = one(report, "podmonitor", "PodMonitor")
    assert pm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["shop", "billing"]}
    [ep] = pm["spec"]["podMetricsEndpoints"]
    assert ep["port"] == "metrics" and ep["interval"] == "30s"
    assert ep["metricRelabelings"][0]["action"] == "drop"


# --- prober -----------------------------------------------------------------------------
def test_prober_runs_the_probe_command_with_credentials_from_the_secret(report: dict[str, Any]) -> None:
    dep = one(report, "prober", "Deployment")
    [c] = dep["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "registry.example.com/e6observe:0.1.0"
    assert c["command"] == ["e6observe"]
    assert c["args"] == [
        "probe",
        "--host",
        "e6data.example.com",
        "--port",
        "443",
        "--cluster-name",
        "analytics",
        "--secure",
        "--interval",
        "15",
        "--timeout",
        "10",
        "--metrics-port",
        "9465",
        "--metrics-addr",
        "0.0.0.0",
        "--catalog",
        "main",
    ]
    env = {e["name"]: e for e in c["env"]}
    for name, key in (("E6DATA_USERNAME", "username"), ("E6DATA_PASSWORD", "password")):
        assert env[name] == {
            "name": name,
            "valueFrom": {"secretKeyRef": {"name": "e6data-prober-credentials", "key": key}},
        }
        assert "value" not in env[name]
    assert c["ports"] == [{"name": "metrics", "containerPort": 9465, "protocol": "TCP"}]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert dep["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_prober_service_and_servicemonitor_select_the_prober(report: dict[str, Any]) -> None:
    dep = one(report, "prober", "Deployment")
    svc = one(report, "prober", "Service")
    sm = one(report, "prober", "ServiceMonitor")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert svc["spec"]["ports"] == [
        {"name": "metrics", "port": 9465, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_no_rendered_output_holds_a_credential(report: dict[str, Any]) -> None:
    for name, case in report["cases"].items():
        raw = case["raw"]
        assert "hunter2" not in raw and "sim-password" not in raw, name
        for o in case["objects"]:
            assert o["object"]["kind"] != "Secret", name  # the chart never creates one
