"""``e6observe sim`` as a user runs it: a server process, a separate client process, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from typing import Any, Dict, List

import pytest
import subproc

from e6observe.cli import main as cli_main
from e6observe.sim import Simulator

pytestmark = pytest.mark.matrix

ENV = dict(os.environ, PYTHONUNBUFFERED="1")

CLIENT = textwrap.dedent("""
    import json, sys, time
    import grpc
    from e6data_python_connector import e6data_grpc

    host, port, user, want = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    conn = e6data_grpc.Connection(host=host, port=port, username=user, password="pw")
    cur = conn.cursor()
    seen, clears, ok, failures = [], 0, 0, {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(seen) < want:
        stage = "execute"
        try:
            cur.execute("SELECT * FROM sample LIMIT 20")
            stage = "fetch"
            rows = cur.fetchall()
            assert [r[0] for r in rows] == list(range(1, 21)), rows
            stage = "clear"
            clears += 1
            cur.clear()
            ok += 1
        except grpc.RpcError as exc:
            key = stage + ": " + str(exc.details())
            failures[key] = failures.get(key, 0) + 1
            cur = conn.cursor()
        active = e6data_grpc._local_strategy_cache["active_strategy"]
        if not seen or seen[-1] != active:
            seen.append(active)
        time.sleep(0.005)
    print(json.dumps({"seen": seen, "clears": clears, "ok": ok, "failures": failures}))
""")


def _sim_cmd(*args: str) -> List[str]:
    return [sys.executable, "-m", "e6observe", "sim", *args]


def test_cli_server_and_a_client_process_flip_recover_and_agree_on_counters(tmp_path: Any) -> None:
    server = subproc.popen(
        _sim_cmd("--port", "0", "--flip-every", "0.6", "--announce-for", "0.3"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        first = server.stdout.readline() if server.stdout else ""
        assert "serving on 127.0.0.1:" in first, first
        port = first.split("127.0.0.1:")[1].split()[0]
        script = tmp_path / "client.py"
        script.write_text(CLIENT)
        client = subproc.run(
            [sys.executable, str(script), "127.0.0.1", port, "cli-client", "4"],
            capture_output=True,
            text=True,
            timeout=60,
            env=ENV,
        )
        assert client.returncode == 0, client.stderr
        saw: Dict[str, Any] = json.loads(client.stdout.strip().splitlines()[-1])
    finally:
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=20)
    assert server.returncode == 0, err
    assert "Traceback" not in err
    lines = out.strip().splitlines()
    assert lines[-2] == "e6observe sim: stopped"
    counters = json.loads(lines[-1])

    # the client followed at least three switches, alternating colours, and kept querying
    assert len(saw["seen"]) >= 4, saw
    assert all(a != b for a, b in zip(saw["seen"], saw["seen"][1:]))
    assert set(saw["seen"]) == {"blue", "green"}
    assert saw["ok"] > 0
    # the connector moves to the new colour when the switch is announced (before it completes),
    # so each change it saw needs an announcement, and every one but the last a completed switch
    transitions = len(saw["seen"]) - 1
    assert counters["announcements"] >= transitions
    assert counters["switches"] >= transitions - 1
    # every clear the client made reached the server, and only those
    assert counters["rpcs"]["clearOrCancelQuery"] == saw["clears"]
    # whatever failed surfaced as a 456, and the server counted at least those for this client
    surfaced = sum(saw["failures"].values())
    assert all(k.endswith("status: 456") for k in saw["failures"]), saw["failures"]
    assert counters["mismatches_by_user"].get("cli-client", 0) >= surfaced
    assert counters["mismatches_total"] == sum(counters["mismatches"].values())
    # a query whose fetch succeeded but whose clear failed stays open on the server
    failed_clears = sum(v for k, v in saw["failures"].items() if k.startswith("clear"))
    assert counters["open_queries"] >= failed_clears


def test_cli_sigterm_stops_cleanly_and_prints_counters() -> None:
    server = subproc.popen(
        _sim_cmd("--port", "0", "--latency-ms", "1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    first = server.stdout.readline() if server.stdout else ""
    assert "serving on" in first
    server.send_signal(signal.SIGTERM)
    out, err = server.communicate(timeout=20)
    assert server.returncode == 0, err
    counters = json.loads(out.strip().splitlines()[-1])
    assert counters["switches"] == 0 and counters["active"] == "blue" and counters["rpcs_total"] == 0


def test_cli_taken_port_is_one_line_and_exit_2() -> None:
    with Simulator(port=0) as taken:
        proc = subproc.run(
            _sim_cmd("--port", str(taken.port)), capture_output=True, text=True, timeout=60, env=ENV
        )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("e6observe sim: error: cannot listen on"), proc.stderr


def test_cli_bad_flag_in_a_real_process_is_one_line_and_exit_2() -> None:
    proc = subproc.run(_sim_cmd("--bogus"), capture_output=True, text=True, timeout=60, env=ENV)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["e6observe sim: error: unrecognized arguments: --bogus"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--port", "abc"],
        ["--port", "70000"],
        ["--flip-every", "0"],
        ["--flip-every", "-1"],
        ["--latency-ms", "nan"],
        ["--latency-ms", "-5"],
        ["--announce-for", "x"],
        ["--port"],
        ["--batch-rows", "0"],
        ["--latency-ms", "1e9"],
        ["--host", "no-such-host.invalid", "--port", "0"],
    ],
)
def test_cli_bad_values_are_one_line_and_exit_2(argv: List[str], capsys: Any) -> None:
    try:
        rc = cli_main(["sim", *argv])
    except SystemExit as exc:
        rc = exc.code
    assert rc == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("e6observe sim: error: "), err
