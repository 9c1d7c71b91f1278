"""The package version (read by packaging and by ``e6observe_build_info``), and the installed
connector's version."""

from __future__ import annotations

import os
from typing import Optional

__version__ = "0.1.0"

_CONNECTOR_DIST = "e6data_python_connector"
_connector: Optional[str] = None


def connector_version() -> str:
    """The installed ``e6data-python-connector`` version, or ``""`` if unknown. Read once.

    The ``*.dist-info`` directory beside the package names it, which saves importing
    ``importlib.metadata`` (and the zipfile, csv and email modules it pulls in) into every
    instrumented process; ``importlib.metadata`` is the fallback for other layouts.
    """
    global _connector
    if _connector is None:
        _connector = _from_dist_info() or _from_metadata()
    return _connector


def connector_version_info() -> tuple[int, ...]:
    """:func:`connector_version` as a tuple of its first three numeric parts (``3, 0, 2``;
    ``()`` if unknown): what version comparisons use."""
    text = connector_version()
    if not text:
        return ()
    return tuple(int("".join(ch for ch in p if ch.isdigit()) or 0) for p in text.split(".")[:3])


def _from_dist_info() -> str:
    try:
        import e6data_python_connector as pkg

        site = os.path.dirname(os.path.dirname(os.path.abspath(pkg.__file__ or "")))
        prefix = _CONNECTOR_DIST + "-"
        found = [
            n[len(prefix) : -len(".dist-info")]
            for n in os.listdir(site)
            if n.startswith(prefix) and n.endswith(".dist-info")
        ]
        return found[0] if len(found) == 1 else ""
    except Exception:
        return ""


def _from_metadata() -> str:
    try:
        from importlib.metadata import version

        return version("e6data-python-connector")
    except Exception:
        return ""
