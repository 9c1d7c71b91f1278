"""The command's messages: every usage error is one line naming the subcommand (exit 2), and a
taken metrics port is one behaviour and one wording for ``demo``, ``probe`` and ``instrument()``.

Before: ``demo --bogus`` printed the top-level usage, probe/check errors came with argparse's
multi-line usage block, ``demo`` exited 2 and ``probe`` 1 on a taken port, and the probe's log
line read "WARNING e6observe: e6observe: cannot serve ...".
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

import e6observe
from e6observe import cli
from e6observe.cli.probe import _LogFormat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: A bad invocation of every subcommand: an unknown option, then a value out of range.
BAD = {
    "demo": [["--bogus"], ["--threads", "0"], ["--duration", "x"]],
    "sim": [["--bogus"], ["--port", "70000"]],
    "probe": [["--host", "h", "--bogus"], ["--host", "h", "--interval", "0"], []],
    "check": [["--host", "h", "--bogus"], ["--host", "h", "--port", "0"], []],
    "status": [["--bogus"], ["--url"]],
    "tail": [["--bogus"], ["--count", "0"]],
    "export": [["--bogus"], []],
}


def test_every_subcommand_is_covered() -> None:
    assert set(BAD) >= set(cli.COMMANDS)


@pytest.mark.parametrize("command,args", [(c, a) for c, cases in BAD.items() for a in cases])
def test_a_usage_error_is_one_line_naming_the_subcommand(
    command: str, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    try:  # argparse's checks exit; a command's own checks return the status
        status = cli.main([command, *args])
    except SystemExit as exc:
        status = exc.code
    assert status == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"e6observe {command}: error: "), lines[0]
    assert "usage:" not in captured.err and captured.out == ""


def test_an_unknown_command_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["bogus"])
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("e6observe: error: argument COMMAND: invalid")


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield s.getsockname()[1]


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, E6DATA_USERNAME="me", E6DATA_PASSWORD="pw-not-used-1")
    return subprocess.run(
        [sys.executable, "-m", "e6observe", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_taken_port_stops_probe_with_the_demos_line(taken_port: int) -> None:
    r = _run(["probe", "--host", "127.0.0.1", "--port", "1", "--metrics-port", str(taken_port)])
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"e6observe probe: cannot serve /metrics on 127.0.0.1:{taken_port}: port already in "
        "use; choose another --metrics-port (0 = any free port)"
    ]


def test_a_taken_port_leaves_instrument_running_with_the_same_words(
    taken_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    try:
        with caplog.at_level(logging.WARNING, logger="e6observe"):
            rec = e6observe.instrument(otel=False, prometheus_port=taken_port)
        assert rec is not None and e6observe.is_instrumented()
        msgs = [r.getMessage() for r in caplog.records if r.name == "e6observe"]
        assert msgs == [
            f"e6observe: cannot serve /metrics on 127.0.0.1:{taken_port}: port already in use; "
            "instrumentation continues without it (metrics are still collected); choose "
            "another prometheus_port / E6OBSERVE_PROMETHEUS_PORT"
        ]
    finally:
        e6observe.uninstrument()


def test_the_probe_log_format_names_the_logger_once() -> None:
    fmt = _LogFormat()
    own = logging.LogRecord("e6observe", logging.WARNING, __file__, 1, "e6observe: contained", None, None)
    other = logging.LogRecord("e6observe.probe", logging.INFO, __file__, 1, "probing", None, None)
    assert fmt.format(own).endswith(" WARNING e6observe: contained")
    assert fmt.format(own).count("e6observe") == 1
    assert fmt.format(other).endswith(" INFO e6observe.probe: probing")


def test_every_command_parses_without_the_connector_grpc_or_thrift() -> None:
    # The dispatcher imports every command module to build its parser; a module that needs the
    # connector at import (the simulator's command did) would break `e6observe export` where the
    # connector cannot be imported. The old "module not built yet" guard hid that by dropping
    # the command; now each command imports such dependencies when it runs.
    script = (
        "import importlib.abc, sys\n"
        "class Blocked(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('e6data_python_connector', 'grpc', 'thrift'):\n"
        "            raise ModuleNotFoundError(name, name=name)\n"
        "sys.meta_path.insert(0, Blocked())\n"
        "from e6observe import cli\n"
        "cli.build_parser().parse_args(['export', 'out'])\n"
        "print(sorted(cli.COMMANDS))\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(sorted(cli.COMMANDS))
