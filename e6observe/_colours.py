"""The two colours of a blue/green deployment: the one definition every module imports.

A leaf: it imports nothing of e6observe, so the hooks, the recorder, the metric table and the
simulator can all depend on it without tying themselves to each other.
"""

from __future__ import annotations

BLUE = "blue"
GREEN = "green"
#: The colours, in label order. Membership tests use this tuple (``x in COLOURS`` compares with
#: ``==``, so an unhashable value from a hostile server cannot raise, as it could with a set).
COLOURS: tuple[str, str] = (BLUE, GREEN)
#: Colour -> its label: the hot paths' one-lookup normalisation of the values the connector
#: writes (``LABEL.get(value)`` for a ``str`` value).
LABEL: dict[str, str] = {BLUE: BLUE, GREEN: GREEN}


def other(colour: str) -> str:
    """The colour that is not ``colour`` (``blue`` for anything but ``blue``)."""
    return GREEN if colour == BLUE else BLUE


__all__ = ["BLUE", "GREEN", "COLOURS", "LABEL", "other"]
