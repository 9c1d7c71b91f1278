"""``./run`` on a machine without the Pythons it needs stops at once with one line naming what
is missing and how to get it. Before, ``./run test`` built .venv for 40 s, then printed
``run: no Python 3.9 found`` and ``./run: line 32: : command not found`` (exit 127)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("bash", "dirname", "sed", "id", "cat", "sha1sum", "cut", "grep", "rm", "ls")


@pytest.fixture
def bare(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of ./run that can find no Python at all, and an environment without pyenv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    script = (ROOT / "run").read_text().replace('"/usr/bin/python$v"', f'"{tmp_path}/none/python$v"')
    run = tmp_path / "checkout" / "run"
    run.parent.mkdir()
    run.write_text(script)
    run.chmod(0o755)
    return run, {"PATH": str(bin_dir), "HOME": str(tmp_path / "home")}


@pytest.mark.parametrize("command,needs", [
    ("test", "./run test needs Python 3.11, 3.9, 3.12; missing: 3.11, 3.9, 3.12"),
    ("demo", "./run needs Python 3.11; missing: 3.11"),
    ("setup", "./run needs Python 3.11; missing: 3.11"),
])
def test_a_missing_python_is_one_line_at_once(bare: tuple[Path, dict[str, str]], command: str,
                                              needs: str) -> None:
    run, env = bare
    (run.parent / "scripts").mkdir()
    (run.parent / "scripts" / "tools-venv.txt").write_text("# the tools venv (Python 3.12)\n")
    started = time.monotonic()
    r = subprocess.run([str(run), command], capture_output=True, text=True, env=env, timeout=60)
    took = time.monotonic() - started
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"run: {needs} - install it (`pyenv install "), lines[0]
    assert "command not found" not in r.stderr and r.stdout == ""
    assert not (run.parent / ".venv").exists()
    print(f"./run {command} stopped after {took:.2f} s")
