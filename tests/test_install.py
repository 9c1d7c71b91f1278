"""The README's *Install in your application*: a wheel built from this checkout, installed into
a fresh virtual environment, runs the README's one-liner in an application that has no checkout
on its path - and the connector, /metrics and the status page work from the installed files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

APP = textwrap.dedent("""
    import json, sys, urllib.request
    import e6observe
    e6observe.instrument(prometheus_port=0)          # the README's one-liner (any free port)

    from e6data_python_connector import e6data_grpc
    from e6observe import _api
    from e6observe.sim import Simulator

    sim = Simulator(port=0, users={"app@example.invalid": "app-password-1"})
    sim.start()
    conn = e6data_grpc.Connection(host=sim.host, port=sim.port,
                                  username="app@example.invalid", password="app-password-1")
    cur = conn.cursor()
    cur.execute("SELECT 1")
    rows = cur.fetchall()
    cur.clear()
    conn.close()
    server = next(o.server for c, o, _ in _api._active.sinks if c == "sink.prometheus")
    metrics = urllib.request.urlopen(server.url + "/metrics", timeout=5).read().decode()
    page = urllib.request.urlopen(server.url + "/", timeout=5).read().decode()
    e6observe.uninstrument()
    sim.stop()
    print(json.dumps({"file": e6observe.__file__, "path": sys.path, "rows": rows,
                      "query_metric": "e6data_query_duration_seconds_count" in metrics,
                      "page": "<title>e6observe" in page}))
""")


def test_a_built_wheel_installs_into_a_fresh_venv_and_runs_the_readme_one_liner(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONWARNINGS"] = "ignore"  # the build backend's deprecation notes
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(ROOT)],
        check=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
        capture_output=True,
    )
    wheels = list(dist.glob("e6observe-*-py3-none-any.whl"))
    assert len(wheels) == 1, wheels

    app_env = tmp_path / "app-venv"
    venv.EnvBuilder(with_pip=True).create(app_env)
    py = app_env / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheels[0])],
        check=True,
        env=env,
        cwd=tmp_path,
        timeout=400,
        capture_output=True,
    )

    app = tmp_path / "app" / "app.py"
    app.parent.mkdir()
    app.write_text(APP)
    r = subprocess.run(
        [str(py), str(app)], capture_output=True, text=True, env=env, cwd=app.parent, timeout=120
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["file"].startswith(str(app_env)), out["file"]  # the installed copy
    assert not any(p and Path(p).resolve() == ROOT for p in out["path"])
    assert out["rows"] == [[1]] or out["rows"] == [(1,)]
    assert out["query_metric"] and out["page"]
    # the command-line entry point came with it
    v = subprocess.run(
        [str(app_env / "bin" / "e6observe"), "--version"],
        capture_output=True,
        text=True,
        env=env,
        cwd=app.parent,
        timeout=60,
    )
    assert v.returncode == 0 and v.stdout.startswith("e6observe "), v.stderr
