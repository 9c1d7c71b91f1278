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


@pytest.mark.parametrize(
    "command,needs",
    [
        ("test", "./run test needs Python 3.11, 3.9, 3.12; missing: 3.11, 3.9, 3.12"),
        ("demo", "./run needs Python 3.11; missing: 3.11"),
        ("setup", "./run needs Python 3.11; missing: 3.11"),
    ],
)
def test_a_missing_python_is_one_line_at_once(
    bare: tuple[Path, dict[str, str]], command: str, needs: str
) -> None:
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


def test_missing_debian_packages_stop_a_non_root_run_in_one_line(
    bare: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """Every Python present, but not root and no prometheus/alertmanager/chromium: one line."""
    run, env = bare
    bin_dir = Path(env["PATH"])
    for v in ("3.11", "3.9", "3.12"):
        # the real interpreter, found as ./run finds it (a pyenv shim needs pyenv on the PATH)
        candidates = [f"python{v}", *map(str, sorted(Path.home().glob(f".pyenv/versions/{v}*/bin/python")))]
        found = ""
        for c in candidates:
            try:
                found = subprocess.run(
                    [c, "-c", "import sys; print(sys.executable)"], capture_output=True, text=True, timeout=30
                ).stdout.strip()
            except OSError:
                continue
            if found:
                break
        if not found:
            pytest.fail(f"this test needs Python {v} (as ./run test does)")
        (bin_dir / f"python{v}").symlink_to(found)
    (bin_dir / "id").unlink()
    (bin_dir / "id").write_text("#!/bin/sh\necho 1000\n")  # not root: nothing is installed
    (bin_dir / "id").chmod(0o755)
    r = subprocess.run([str(run), "test"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "run: ./run test needs prometheus prometheus-alertmanager chromium (Debian packages): run "
        "it as root once, or `sudo apt-get install prometheus prometheus-alertmanager chromium`"
    ]
