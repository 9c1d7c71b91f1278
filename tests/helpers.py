"""Helpers shared by the tests (``from helpers import ...``; fixtures stay in conftest.py).

Plain functions only, no fixtures: the soak (``python -m tests.soak``) and the chaos rig import
them outside pytest too.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

#: Values of the CI variable that mean "this is CI" (GitHub, GitLab and most others set "true").
_CI_TRUE = ("1", "true", "yes")


# -- tools a test needs --------------------------------------------------------------------------
def in_ci() -> bool:
    """True when the environment says this is CI (``CI=true``; ``.ci/run`` sets it)."""
    return os.environ.get("CI", "").strip().lower() in _CI_TRUE


def unavailable(what: str) -> NoReturn:
    """A tool a test needs is missing: in CI the test fails (CI must run everything), elsewhere
    it is skipped with the reason. ``what`` says what is missing and how to get it."""
    import pytest

    if in_ci():
        pytest.fail(f"{what} (CI=true: a missing tool fails the run)", pytrace=False)
    pytest.skip(f"{what} (skipped outside CI; CI=true fails instead)")


def need_binary(*names: str, install: str) -> str:
    """The path of the first of ``names`` found on PATH; else :func:`unavailable`, naming the
    first and ``install`` (how to get it)."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    unavailable(f"{names[0]} not found: {install}")
