"""The test suite's own rules: what bare ``pytest`` runs, and a missing tool skips outside CI and
fails in CI."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import conftest
import helpers
import pytest
import yaml

MISSING = "e6observe-no-such-binary"


@pytest.mark.parametrize("value", ["", "false", "0"])
def test_a_missing_binary_skips_outside_ci_and_names_the_fix(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match=f"{MISSING} not found: apt-get install x"):
        helpers.need_binary(MISSING, install="apt-get install x")


@pytest.mark.parametrize("value", ["true", "TRUE", "1", "yes"])
def test_a_missing_binary_fails_in_ci(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match=f"{MISSING} not found.*CI=true"):
        helpers.need_binary(MISSING, install="apt-get install x")


def test_a_present_binary_is_found_whatever_ci_says(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert helpers.need_binary(MISSING, "sh", install="-").endswith("/sh")


def _config(
    *, all_flag: bool = False, markexpr: str = "", source: Any = pytest.Config.ArgsSource.TESTPATHS
) -> Any:
    deselected: list[Any] = []
    return SimpleNamespace(
        getoption=lambda name: all_flag,
        option=SimpleNamespace(markexpr=markexpr),
        args_source=source,
        deselected=deselected,
        hook=SimpleNamespace(pytest_deselected=lambda items: deselected.extend(items)),
    )


def _items() -> list[Any]:
    return [
        SimpleNamespace(name=n, keywords=dict.fromkeys(k))
        for n, k in (
            ("quick", ["matrix"]),
            ("slow", ["slow"]),
            ("live", ["live"]),
            ("both", ["slow", "live"]),
            ("plain", []),
        )
    ]


@pytest.mark.parametrize(
    "config,kept",
    [
        (_config(), ["quick", "plain"]),  # bare pytest: the quick set
        (_config(all_flag=True), ["quick", "slow", "live", "both", "plain"]),  # ./run test, CI
        (_config(markexpr="matrix"), ["quick", "slow", "live", "both", "plain"]),  # -m selects alone
        (_config(source=pytest.Config.ArgsSource.ARGS), ["quick", "slow", "live", "both", "plain"]),
    ],
    ids=["bare", "all", "markexpr", "named-tests"],
)
def test_bare_pytest_leaves_out_slow_and_live_tests_and_says_so(config: Any, kept: list[str]) -> None:
    items = _items()
    conftest.pytest_collection_modifyitems(config, items)
    assert [i.name for i in items] == kept
    assert sorted(i.name for i in config.deselected) == sorted(
        {"quick", "slow", "live", "both", "plain"} - set(kept)
    )
    header = conftest.pytest_report_header(config)
    assert (header is not None) == (kept == ["quick", "plain"])


ROOT = Path(__file__).resolve().parent.parent


def _lint_commands() -> list[str]:
    """The commands of ./run's lint function, without the .venv/bin/ prefix."""
    text = (ROOT / "run").read_text(encoding="utf-8")
    body = text[text.index("\nlint() {") : text.index("\n}\n", text.index("\nlint() {"))]
    found = re.findall(
        r"^\s+(?:\.venv/bin/)?((?:ruff|mypy|bash scripts/regen)\b[^|]*?)\s*(?:\|\||\||$)", body, re.M
    )
    return [" ".join(c.replace("--output-format concise", "").split()) for c in found]


def test_pre_commit_runs_the_lint_commands_without_network() -> None:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text(encoding="utf-8"))
    hooks = [h for repo in config["repos"] for h in repo["hooks"]]
    # Local hooks on tools already installed: pre-commit has nothing to fetch.
    assert [repo["repo"] for repo in config["repos"]] == ["local"]
    assert {h["language"] for h in hooks} == {"unsupported"}
    assert all(h["entry"].startswith((".venv/bin/", "bash scripts/")) for h in hooks)
    entries = [
        " ".join(h["entry"].replace(".venv/bin/", "").replace("--force-exclude", "").split()) for h in hooks
    ]
    lint = _lint_commands()
    assert len(lint) == 4, lint  # ruff check, ruff format --check, mypy, regen --check
    for command in lint:
        # ruff runs on the files pre-commit passes instead of on ".".
        assert command.removesuffix(" .") in entries, (command, entries)
