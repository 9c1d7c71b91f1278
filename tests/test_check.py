"""``e6observe check`` against the simulator: READY, and NOT READY naming the failing step."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import subproc
from helpers import PASSWORD, USER, login_errors_surface

from e6observe import cli
from e6observe.cli._connopts import (
    Credentials,
    UsageError,
    describe_error,
    first_scalar,
    load_credentials,
    parse_credentials_file,
)
from e6observe.sim import Simulator

REPO = Path(__file__).resolve().parent.parent
# Every check must work on the previous connector line (2.3.x) and Python 3.9 too.
pytestmark = pytest.mark.matrix


@pytest.fixture
def creds_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("E6DATA_USERNAME", USER)
    monkeypatch.setenv("E6DATA_PASSWORD", PASSWORD)


def run_check(sim: Simulator, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = cli.main(["check", "--host", sim.host, "--port", str(sim.port), *extra])
    out, err = capsys.readouterr()
    return code, out + err


def json_check(sim: Simulator, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, dict[str, Any]]:
    code = cli.main(["check", "--host", sim.host, "--port", str(sim.port), "--json", *extra])
    out, err = capsys.readouterr()
    assert PASSWORD not in out + err
    return code, json.loads(out)


def test_ready_against_simulator(sim: Simulator, creds_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_check(sim, capsys)
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[-1] == "READY"
    step_lines = [ln for ln in lines if ln.startswith("  ")]
    assert len(step_lines) == 6 and all("✓" in ln for ln in step_lines), out
    assert "SELECT 1 returned 1" in out
    assert "active strategy: blue" in out
    assert "5/5 connections" in out
    assert PASSWORD not in out


def test_json_result_is_machine_readable(
    sim: Simulator, creds_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, doc = json_check(sim, capsys, "--connections", "3")
    assert code == 0
    assert doc["ready"] is True and doc["verdict"] == "READY" and doc["failed_step"] is None
    assert doc["target"] == f"{sim.host}:{sim.port}"
    names = [s["name"] for s in doc["steps"]]
    assert names == ["connect", "query", "strategy", "connections", "connect_time", "query_time"]
    by = {s["name"]: s for s in doc["steps"]}
    assert all(s["status"] == "pass" for s in doc["steps"])
    assert by["query"]["value"] == 1
    assert by["strategy"]["value"] == "blue"
    assert by["connections"]["value"] == 3
    # one connect + three concurrent ones were measured; the worst of them is reported
    assert "(4 measured)" in by["connect_time"]["summary"]
    assert by["connect_time"]["limit_seconds"] == 5.0 and by["query_time"]["limit_seconds"] == 1.0
    # the simulator really saw the sessions: 1 + 3
    assert sim.counters()["sessions"] == 4


def test_strategy_detection_during_an_announced_switch(
    sim: Simulator, creds_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # green announced, blue still served: the connector adopts the announced colour at login
    sim.announce()
    code, doc = json_check(sim, capsys, "--connections", "1")
    assert code == 0
    assert {s["name"]: s for s in doc["steps"]}["strategy"]["value"] == "green"


def test_strategy_detection_finds_green(
    sim: Simulator, creds_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    sim.flip(announce=False)
    code, doc = json_check(sim, capsys)
    assert code == 0
    assert {s["name"]: s for s in doc["steps"]}["strategy"]["value"] == "green"


def test_refused_login_is_not_ready(
    sim: Simulator, creds_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    sim.refuse_sessions(True)
    code, out = run_check(sim, capsys)
    assert code == 1
    last = out.strip().splitlines()[-1]
    assert last.startswith("NOT READY: connect failed")
    if login_errors_surface():
        assert "Access denied" in last
    else:  # 2.3.11-2.3.15 swallow the server's error in get_session_id and returns no session
        assert "authentication failed: the cluster gave no session" in last
    assert "✗" in out and "skipped: needs connect" in out
    assert PASSWORD not in out


def test_stopped_simulator_is_not_ready(
    sim: Simulator, creds_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    sim.stop()
    code, doc = json_check(sim, capsys)
    assert code == 1
    assert doc["ready"] is False and doc["failed_step"] == "connect"
    if login_errors_surface():
        assert "UNAVAILABLE" in doc["reason"]
    else:  # 2.3.11-2.3.15 swallow the connection error in get_session_id
        assert doc["reason"].startswith("authentication failed: the cluster gave no session")
    assert [s["status"] for s in doc["steps"]] == ["fail"] + ["skip"] * 5


def test_injected_slowness_fails_query_time(
    sim: Simulator, creds_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    sim.set_latency(250, method="executeStatement")
    code, doc = json_check(sim, capsys, "--max-query-seconds", "0.2", "--connections", "2")
    assert code == 1
    assert doc["failed_step"] == "query_time"
    by = {s["name"]: s for s in doc["steps"]}
    assert by["query"]["status"] == "pass"  # the query works, it is just too slow
    assert by["query_time"]["status"] == "fail"
    assert by["query_time"]["seconds"] >= 0.25
    assert ">= limit 200.0 ms" in by["query_time"]["summary"]


def test_hung_server_gives_not_ready_at_the_step_deadline(
    sim: Simulator, creds_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # authenticate takes far longer than the step deadline: the step fails, nothing hangs
    sim.set_latency(3000, method="authenticate")
    code, doc = json_check(sim, capsys, "--timeout", "0.3")
    assert code == 1
    assert doc["failed_step"] == "connect"
    assert doc["reason"] == "no answer: timed out after 0.3 s"


def test_hung_server_process_exits_with_not_ready(sim: Simulator, tmp_path: Path) -> None:
    """As a pipeline runs it: a separate process, exit status 1, abandoned RPC or not."""
    sim.set_latency(3000, method="authenticate")
    env = dict(os.environ, E6DATA_USERNAME=USER, E6DATA_PASSWORD=PASSWORD)
    proc = subproc.run(
        [
            sys.executable,
            "-m",
            "e6observe",
            "check",
            "--host",
            sim.host,
            "--port",
            str(sim.port),
            "--timeout",
            "0.3",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert "NOT READY: connect failed (no answer: timed out after 0.3 s)" in proc.stdout
    assert "Traceback" not in proc.stderr
    assert PASSWORD not in proc.stdout + proc.stderr


# -- credentials -------------------------------------------------------------------------------
def test_no_credentials_is_usage_error(
    sim: Simulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("E6DATA_USERNAME", raising=False)
    monkeypatch.delenv("E6DATA_PASSWORD", raising=False)
    code, out = run_check(sim, capsys)
    assert code == 2
    assert "no credentials: set E6DATA_USERNAME and E6DATA_PASSWORD" in out
    assert sim.counters()["rpcs_total"] == 0


def test_password_is_not_accepted_on_the_command_line(
    sim: Simulator, creds_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["check", "--host", sim.host, "--port", str(sim.port), "--password", "x"])
    assert exc.value.code == 2


@pytest.mark.parametrize(
    "text",
    [
        f"{USER}\n{PASSWORD}\n",
        f"# e6data\nE6DATA_USERNAME={USER}\nE6DATA_PASSWORD='{PASSWORD}'\n",
        f'export username="{USER}"\npassword={PASSWORD}\n',
    ],
)
def test_credentials_file_forms(
    text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("E6DATA_USERNAME", raising=False)
    monkeypatch.delenv("E6DATA_PASSWORD", raising=False)
    f = tmp_path / "creds"
    f.write_text(text)
    with Simulator(port=0, users={USER: PASSWORD}) as strict:
        code, out = run_check(strict, capsys, "--credentials-file", str(f), "--connections", "1")
    assert code == 0, out
    assert PASSWORD not in out


def test_wrong_password_in_file_is_not_ready(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "creds"
    f.write_text(f"{USER}\nnot-the-password\n")
    with Simulator(port=0, users={USER: PASSWORD}) as strict:
        code, out = run_check(strict, capsys, "--credentials-file", str(f))
    assert code == 1
    if login_errors_surface():
        assert "invalid credentials" in out
    else:
        assert "authentication failed: the cluster gave no session" in out
    assert "not-the-password" not in out


def test_credentials_file_errors_do_not_echo_content(tmp_path: Path) -> None:
    f = tmp_path / "creds"
    f.write_text("only-one-line-secret\n")
    with pytest.raises(UsageError) as exc:
        load_credentials(str(f), {})
    assert "only-one-line-secret" not in str(exc.value)
    with pytest.raises(UsageError, match="cannot read credentials file"):
        load_credentials(str(tmp_path / "missing"), {})
    with pytest.raises(UsageError, match="both a username and a password"):
        parse_credentials_file("E6DATA_USERNAME=someone\n")


def test_credentials_hide_the_password() -> None:
    c = Credentials("me", "hunter2")
    assert "hunter2" not in repr(c) and "hunter2" not in str(c)
    # a server message echoing the password is scrubbed before it is shown
    assert describe_error(RuntimeError("bad token hunter2 for me"), c) == "RuntimeError: bad token *** for me"


def test_ssl_cert_without_secure_is_usage_error(
    sim: Simulator, creds_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert = tmp_path / "ca.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    code, out = run_check(sim, capsys, "--ssl-cert", str(cert))
    assert code == 2 and "--ssl-cert needs --secure" in out


def test_first_scalar_reads_the_first_value_whatever_the_nesting() -> None:
    # check and probe read SELECT 1 through it: the connector's fetchone is [[v]], fetchall
    # [(v, ...), ...]; an empty result stays what it is (the step then reports it).
    assert first_scalar([[1]]) == 1
    assert first_scalar([(7, 8), (9, 10)]) == 7
    assert first_scalar(((("x",),),)) == "x"
    assert first_scalar([]) == []
    assert first_scalar(None) is None
    assert first_scalar([[]]) == []
