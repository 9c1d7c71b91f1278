"""e6observe: observability for applications using the e6data Python connector.

    import e6observe
    e6observe.instrument()          # one line; idempotent; e6observe.uninstrument() reverses it

Everything else (options, metrics, events) is documented in README.md and docs/.
"""

from __future__ import annotations

from ._version import __version__

__all__ = ["__version__", "instrument", "uninstrument", "instrument_connection", "is_instrumented"]


def __getattr__(name: str) -> object:
    # The public API lives in _api; importing e6observe itself patches nothing and imports
    # neither the connector nor any exporter.
    if name in ("instrument", "uninstrument", "instrument_connection", "is_instrumented", "get_recorder"):
        from . import _api

        return getattr(_api, name)
    raise AttributeError(f"module 'e6observe' has no attribute {name!r}")
