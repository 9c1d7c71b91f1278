"""``e6observe export``: the shipped dashboards/rules, byte-equal to the generated ones, and the
settings a kube-prometheus-stack user changes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import need_binary

from e6observe.cli import export
from e6observe.cli import main as cli

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "e6observe" / "mixin"
#: Every file the wheel ships for export, and the original it must equal byte for byte.
COPIES = {
    "files/dashboards/e6data-blue-green-overview.json": "dashboards/json/e6data-blue-green-overview.json",
    "files/dashboards/e6data-client-runtime.json": "dashboards/json/e6data-client-runtime.json",
    "files/rules/e6observe.rules.yaml": "dashboards/rules/e6observe.rules.yaml",
    "files/rules/e6observe.records.yaml": "dashboards/rules/e6observe.records.yaml",
    "files/rules/tests/e6observe.rules.test.yaml": "dashboards/rules/tests/e6observe.rules.test.yaml",
    "files/docs/runbook.md": "docs/runbook.md",
    "files/docs/alerts.md": "docs/alerts.md",
}

pytestmark = pytest.mark.timeout(120)


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    exe = need_binary("promtool", install="apt-get install prometheus (./run test does this as root)")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


@pytest.mark.parametrize("copy", sorted(COPIES))
def test_the_packaged_copies_are_byte_equal_to_the_originals(copy: str) -> None:
    assert (PACKAGE / copy).read_bytes() == (ROOT / COPIES[copy]).read_bytes(), (
        f"e6observe/mixin/{copy} drifted from {COPIES[copy]}: run ./run regen"
    )


#: The rule generator: sources in the package (dashboards/build.py imports them), not copies.
SOURCES = {"__init__.py", "config.py", "queries.py", "alerts.py", "records.py"}


def test_every_shipped_file_is_listed() -> None:
    shipped = {
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and str(p.relative_to(PACKAGE)) not in SOURCES
    }
    assert shipped == set(COPIES)


def test_export_writes_the_shipped_files_and_promtool_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["export", str(tmp_path)]) == 0
    for copy, original in COPIES.items():
        if copy.startswith("files/"):
            rel = copy[len("files/") :]
            assert (tmp_path / rel).read_bytes() == (ROOT / original).read_bytes(), rel
    assert promtool("check", "rules", str(tmp_path / "rules/e6observe.rules.yaml")).returncode == 0
    r = promtool("test", "rules", "tests/e6observe.rules.test.yaml", cwd=tmp_path / "rules")
    assert r.returncode == 0, r.stdout + r.stderr


def test_settings_regenerate_the_rules_and_relabel_the_dashboards(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = cli(
        [
            "export",
            str(tmp_path),
            "--cluster-label",
            "k8s_cluster",
            "--namespace-label",
            "kube_namespace",
            "--selector",
            'job=~"orders|billing"',
            "--set",
            "latency_threshold_seconds=2.5",
            "--set",
            "latency_for=3m",
            "--runbook-url",
            "https://wiki.example/e6observe-runbook",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "not written" in out  # the promtool cases encode the defaults
    assert not (tmp_path / "rules/tests").exists()
    rules_text = (tmp_path / "rules/e6observe.rules.yaml").read_text()
    assert promtool("check", "rules", str(tmp_path / "rules/e6observe.rules.yaml")).returncode == 0
    import yaml

    rules = {r["alert"]: r for r in yaml.safe_load(rules_text)["groups"][0]["rules"]}
    # The recording rules the dashboards read follow the same labels and selector.
    records = tmp_path / "rules/e6observe.records.yaml"
    assert promtool("check", "rules", str(records)).returncode == 0
    for r in yaml.safe_load(records.read_text())["groups"][0]["rules"]:
        assert "by (k8s_cluster, kube_namespace, job" in r["expr"], r
        assert 'job=~"orders|billing"' in r["expr"], r
    lat = rules["E6dataQueryLatencyHigh"]
    assert lat["expr"].endswith("> 2.5") and lat["for"] == "3m"
    assert "by (k8s_cluster, kube_namespace, job, strategy, le)" in lat["expr"]
    assert 'job=~"orders|billing"' in lat["expr"]
    assert lat["annotations"]["runbook_url"] == (
        "https://wiki.example/e6observe-runbook#e6dataquerylatencyhigh"
    )
    for name in export.DASHBOARDS:
        d = json.loads((tmp_path / "dashboards" / name).read_text())
        text = json.dumps(d)
        assert 'k8s_cluster=~\\"$cluster\\"' in text and "kube_namespace=~" in text
        # No query still names the default labels (the variables keep their names).
        exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
        assert exprs and all("cluster=~" not in e.replace("k8s_cluster=~", "") for e in exprs)
        queries = [
            v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            for v in d["templating"]["list"]
            if v.get("type") == "query"
        ]
        assert any(
            q == 'label_values(e6observe_build_info{job=~"orders|billing"}, k8s_cluster)' for q in queries
        ), queries


def test_bad_settings_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["--set", "nope=1"],
        ["--set", "latency_for=soon"],
        ["--cluster-label", "not a label"],
        ["--selector", "{job='x'}"],
        ["--set", "flapping_threshold=x"],
    ):
        assert cli(["export", str(tmp_path / "a"), *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("e6observe export: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "a").exists()


def test_existing_files_are_not_clobbered_nor_symlinks_followed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["export", str(tmp_path)]) == 0
    assert cli(["export", str(tmp_path)]) == 0  # unchanged files: fine
    rules = tmp_path / "rules/e6observe.rules.yaml"
    rules.write_text("# mine\n")
    assert cli(["export", str(tmp_path)]) == 2
    assert rules.read_text() == "# mine\n"
    assert cli(["export", str(tmp_path), "--force"]) == 0
    assert rules.read_text().startswith("# Generated")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    rules.unlink()
    os.symlink(victim, rules)
    assert cli(["export", str(tmp_path), "--force"]) == 2
    assert victim.read_text() == "keep"


def test_help_names_every_option() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "e6observe", "export", "--help"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0
    for opt in (
        "--selector",
        "--cluster-label",
        "--namespace-label",
        "--runbook-url",
        "--set",
        "--list-settings",
        "--force",
        "promtool test rules",
    ):
        assert opt in r.stdout, opt


def _panel_queries(d: dict[str, Any]) -> list[str]:
    out = []
    for p in d["panels"]:
        for sub in [p, *p.get("panels", [])]:
            out += [t["expr"] for t in sub.get("targets", [])]
    return out


@pytest.mark.slow
def test_the_built_wheel_exports_without_a_checkout(tmp_path: Path) -> None:
    """pip install <wheel> into a fresh venv (no checkout on the path), export, promtool."""
    wheel_dir = tmp_path / "wheel"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheel_dir), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    # No setuptools deprecation or editable-mode warnings (issue 15: `./run demo` was noisy).
    assert "Warning" not in build.stdout + build.stderr, build.stderr
    (wheel,) = wheel_dir.glob("e6observe-*.whl")
    venv = tmp_path / "venv"
    # --system-site-packages: the dependencies come from this interpreter's environment
    # (offline, fast); e6observe itself only from the wheel.
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120
    )
    py = venv / "bin" / "python"
    inst = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert inst.returncode == 0, inst.stderr
    out = tmp_path / "x"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    where = subprocess.run(
        [str(py), "-c", "import e6observe; print(e6observe.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert str(venv) in where.stdout, where.stdout + where.stderr  # not the checkout
    r = subprocess.run(
        [str(venv / "bin" / "e6observe"), "export", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert promtool("check", "rules", str(out / "rules/e6observe.rules.yaml")).returncode == 0
    t = promtool("test", "rules", "tests/e6observe.rules.test.yaml", cwd=out / "rules")
    assert t.returncode == 0, t.stdout + t.stderr
    for name in export.DASHBOARDS:
        d = json.loads((out / "dashboards" / name).read_text())
        queries = _panel_queries(d)
        assert queries and all(q.strip() for q in queries), name
        assert all(p.get("targets") for p in d["panels"] if p["type"] != "row"), name
