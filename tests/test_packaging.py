"""What pyproject.toml declares is true: licence, lower bounds tested by the minimum-versions
run, every imported third-party package declared."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the main suite runs on 3.11
    tomllib = pytest.importorskip("tomli")


def project() -> dict:  # type: ignore[type-arg]
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]  # type: ignore[no-any-return]


def lower_bounds() -> dict[str, str]:
    out = {}
    for dep in project()["dependencies"]:
        m = re.match(r"([A-Za-z0-9_.-]+)\s*(?:\[[^]]*\])?\s*.*?>=\s*([0-9][^,;\s]*)", dep)
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def test_the_minimum_versions_run_installs_the_declared_lower_bounds() -> None:
    pins = {}
    for line in (ROOT / "scripts/minversions.txt").read_text().splitlines():
        m = re.match(r"([A-Za-z0-9_.-]+)==(\S+)$", line.strip())
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    bounds = lower_bounds()
    for name in (
        "grpcio",
        "protobuf",
        "prometheus-client",
        "opentelemetry-api",
        "opentelemetry-sdk",
        "opentelemetry-instrumentation",
        "psutil",
        "thrift",
    ):
        assert name in bounds, name
        declared = tuple(int(x) for x in re.findall(r"\d+", bounds[name]))
        pinned = tuple(int(x) for x in re.findall(r"\d+", pins[name]))
        assert pinned[: len(declared)] == declared, (name, bounds[name], pins[name])


def test_every_imported_third_party_package_is_declared() -> None:
    declared = {d.lower() for d in lower_bounds()}
    # import name -> distribution
    dist = {
        "grpc": "grpcio",
        "google": "protobuf",
        "prometheus_client": "prometheus-client",
        "psutil": "psutil",
        "e6data_python_connector": "e6data-python-connector",
        "opentelemetry": "opentelemetry-api",
    }
    optional = {"yaml"}  # `e6observe export` with settings: the [export] extra
    found: set[str] = set()
    for path in (ROOT / "e6observe").rglob("*.py"):
        if "v1" in path.parts and path.name.endswith("_pb2.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                else []
            )
            for n in names:
                found.add(
                    n.split(".")[0]
                    if not n.startswith("opentelemetry.")
                    else "opentelemetry-" + n.split(".")[1]
                )
    stdlib = set(sys.stdlib_module_names)
    third = {n for n in found if n not in stdlib and n != "e6observe"}
    for name in sorted(third):
        if name in optional:
            continue
        if name.startswith("opentelemetry-"):
            sub = name.split("-", 1)[1]
            want = {
                "sdk": "opentelemetry-sdk",
                "instrumentation": "opentelemetry-instrumentation",
                "exporter": "opentelemetry-exporter-otlp-proto-grpc",
            }.get(sub, "opentelemetry-api")
            if want.startswith("opentelemetry-exporter"):
                assert want in str(project()["optional-dependencies"]["otlp"])
                continue
            assert want in declared, name
            continue
        assert dist.get(name, name) in declared, name


def test_licence_is_an_spdx_expression_with_the_apache_text() -> None:
    assert project()["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    assert any(re.match(r"setuptools>=(7[7-9]|[89]\d)", r) for r in build), build
    assert project()["classifiers"]
