"""Value types for command-line flags, shared by every ``e6observe`` command.

Each factory returns a callable for argparse's ``type=``: it parses the text and checks the range,
raising :class:`argparse.ArgumentTypeError` with one wording everywhere (the commands turn that
into a one-line usage error, exit status 2).
"""

from __future__ import annotations

import argparse
import math
from typing import Callable, Optional


def _bounds(lo: float, hi: Optional[float], strict: bool) -> str:
    if hi is None:
        return f"{'>' if strict else '>='} {lo:g}"
    return f"within {lo:g}..{hi:g}"


def integer(lo: int, hi: Optional[int] = None, what: str = "an integer") -> Callable[[str], int]:
    """Whole numbers in ``lo..hi`` (no upper bound when ``hi`` is None)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be {_bounds(lo, hi, False)}, got {v}")
        return v

    return parse


def number(
    lo: float = 0.0, hi: Optional[float] = None, strict: bool = False, what: str = "a number"
) -> Callable[[str], float]:
    """Finite floats at least ``lo`` (above it when ``strict``) and at most ``hi``."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        low_ok = v > lo if strict else v >= lo
        if not (math.isfinite(v) and low_ok and (hi is None or v <= hi)):
            raise argparse.ArgumentTypeError(
                f"must be a finite number {_bounds(lo, hi, strict)}, got {text!r}"
            )
        return v

    return parse


#: A TCP port; 0 asks the OS for a free one.
port = integer(0, 65535, "a port number")
#: A port to connect to (0 is not one).
remote_port = integer(1, 65535, "a port number")
non_negative = number()
positive = number(strict=True)

__all__ = ["integer", "number", "port", "remote_port", "non_negative", "positive"]
