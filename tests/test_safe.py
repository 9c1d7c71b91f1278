"""``e6observe._safe``: counting a failure whose caller logged its own message."""

from __future__ import annotations

import logging
from typing import Iterator

import pytest

from e6observe import _safe


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    _safe.reset_for_tests()
    yield
    _safe.reset_for_tests()


def _generic_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "contained a" in r.getMessage()]


def test_a_reported_failure_is_counted_without_the_generic_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="e6observe"):
        _safe.record_internal_error("sink.prometheus", OSError("taken"), reported=True)
        _safe.record_internal_error("sink.prometheus", OSError("taken again"))
    assert _safe.internal_errors() == {"sink.prometheus": 2}
    # The caller's own message stands for the kind: the generic line never follows it.
    assert _generic_lines(caplog) == []


def test_another_kind_or_component_still_gets_its_one_generic_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="e6observe"):
        _safe.record_internal_error("sink.prometheus", OSError("taken"), reported=True)
        _safe.record_internal_error("sink.prometheus", ValueError("bad"))
        _safe.record_internal_error("sink.prometheus", ValueError("bad again"))
        _safe.record_internal_error("sink.otel", OSError("down"))
    assert _safe.internal_errors() == {"sink.prometheus": 3, "sink.otel": 1}
    lines = _generic_lines(caplog)
    assert len(lines) == 2
    assert "ValueError in sink.prometheus" in lines[0] and "OSError in sink.otel" in lines[1]
