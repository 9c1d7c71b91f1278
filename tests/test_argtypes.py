"""The shared flag types: ranges, non-finite numbers and the wording every command prints."""

from __future__ import annotations

import argparse

import pytest

from e6observe.cli import _argtypes as A


@pytest.mark.matrix
@pytest.mark.parametrize(
    "parse, text, message",
    [
        (A.port, "65536", "must be within 0..65535, got 65536"),
        (A.port, "http", "not a port number: 'http'"),
        (A.remote_port, "0", "must be within 1..65535, got 0"),
        (A.integer(0), "-1", "must be >= 0, got -1"),
        (A.non_negative, "inf", "must be a finite number >= 0, got 'inf'"),
        (A.non_negative, "nan", "must be a finite number >= 0, got 'nan'"),
        (A.positive, "0", "must be a finite number > 0, got '0'"),
        (A.number(0.05, 3600, what="a number of seconds"), "1h", "not a number of seconds: '1h'"),
    ],
)
def test_bad_values_name_the_rule(parse: object, text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as e:
        parse(text)  # type: ignore[operator]
    assert str(e.value) == message


@pytest.mark.matrix
def test_good_values_parse_at_the_bounds() -> None:
    assert (A.port("0"), A.port("65535"), A.remote_port("1")) == (0, 65535, 1)
    assert A.integer(1, 64)("64") == 64
    assert A.non_negative("0") == 0.0 and A.positive("0.001") == 0.001
    assert A.number(0.05, 3600)("3600") == 3600.0
