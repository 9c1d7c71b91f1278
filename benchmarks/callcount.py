"""Counting e6observe's Python-level calls (``sys.setprofile``): the hot-path regression guard of
``tests/test_call_count.py`` and the per-row check of the large-result phase.

Only functions whose code lives in the e6observe package count (the simulator's own module,
``e6observe/sim``, is left out), and only on the thread that enters the counter. A coroutine or a
generator counts once however often it is resumed (each resumption is a profiler "call" event
too).
"""

from __future__ import annotations

import collections
import os
import sys
from typing import Any

import e6observe

PKG = os.path.dirname(os.path.abspath(e6observe.__file__ or ""))
SIM = os.path.join(PKG, "sim") + os.sep
_GEN = 0x20 | 0x80 | 0x200  # CO_GENERATOR | CO_COROUTINE | CO_ASYNC_GENERATOR


class CallCounter:
    """Counts e6observe function entries on this thread while active (``with counter:``)."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self._seen: set[int] = set()
        self._frames: list[Any] = []  # keeps resumed coroutine frames alive: ids stay unique
        self._prev: Any = None

    def _profile(self, frame: Any, event: str, arg: Any) -> None:
        if event != "call":
            return
        code = frame.f_code
        f = code.co_filename
        if not f.startswith(PKG) or f.startswith(SIM):
            return
        if code.co_flags & _GEN:
            if id(frame) in self._seen:
                return
            self._seen.add(id(frame))
            self._frames.append(frame)
        self.calls[f"{os.path.relpath(f, PKG)}:{code.co_name}"] += 1

    def total(self) -> int:
        return sum(self.calls.values())

    def __enter__(self) -> CallCounter:
        self.calls.clear()
        self._seen.clear()
        self._frames.clear()
        self._prev = sys.getprofile()
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc: Any) -> None:
        sys.setprofile(self._prev)
        self._frames.clear()
