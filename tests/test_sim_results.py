"""The simulator's result encoding, decoded by the connector's own decoders (no server)."""

from __future__ import annotations

import datetime as dt
import io

import pytest
from e6data_python_connector.datainputstream import get_query_columns_info, read_rows_from_chunk

from e6observe.sim import results as R

pytestmark = pytest.mark.matrix


def as_connector(v: object) -> object:
    """What the connector's decoder returns for a sample value (ISO strings for time types)."""
    if isinstance(v, dt.datetime):
        return v.strftime("%Y-%m-%dT%H:%M:%S") + f".{v.microsecond // 1000:03d}+00:00"
    if isinstance(v, dt.date):
        return v.isoformat()
    return v


def test_metadata_decodes_to_row_count_and_typed_fields() -> None:
    payload = R.encode_metadata(R.SAMPLE_COLUMNS, 1234)
    rowcount, fields = get_query_columns_info(io.BytesIO(payload))
    assert rowcount == 1234
    assert [(f.get_name(), f.get_field_type()) for f in fields] == [
        ("id", "LONG"),
        ("name", "STRING"),
        ("qty", "INTEGER"),
        ("price", "DOUBLE"),
        ("created_at", "DATETIME"),
        ("day", "DATE"),
        ("active", "BOOLEAN"),
        ("note", "STRING"),
    ]
    assert fields[4].get_zone() == "UTC"


def test_metadata_carries_non_ascii_names() -> None:
    cols = (R.Column("prix_€", "DOUBLE"),)
    _, fields = get_query_columns_info(io.BytesIO(R.encode_metadata(cols, 0)))
    assert fields[0].get_name() == "prix_€"


def test_chunk_round_trips_every_column_type_with_nulls() -> None:
    rows = [R.sample_row(i) for i in range(40)]
    _, fields = get_query_columns_info(io.BytesIO(R.encode_metadata(R.SAMPLE_COLUMNS, 40)))
    decoded = read_rows_from_chunk(fields, R.encode_chunk(R.SAMPLE_COLUMNS, rows))
    assert decoded == [[as_connector(v) for v in r] for r in rows]
    # every column but the key carries at least one NULL in these rows: null sets are exercised
    for j in range(1, len(R.SAMPLE_COLUMNS)):
        assert any(r[j] is None for r in decoded), R.SAMPLE_COLUMNS[j].name


def test_sample_rows_are_anchored_values() -> None:
    assert R.sample_row(0) == (
        1,
        "item-0001",
        -500,
        0.5,
        dt.datetime(2024, 1, 1, 0, 0, 7, tzinfo=dt.timezone.utc),
        dt.date(2024, 1, 1),
        True,
        None,
    )
    r3 = R.sample_row(3)
    assert r3[0] == 4 and r3[2] is None  # qty is NULL when i % 7 == 3
    assert R.sample_row(1)[7] == "ünïcödé ✓"


def test_sample_is_split_into_batches_of_batch_rows() -> None:
    res = R.ResultCache(batch_rows=300).sample(R.SAMPLE_ROWS)
    assert R.chunk_rows(res.batches) == [300, 300, 300, 100]
    assert res.row_count == 1000
    assert R.ResultCache(batch_rows=300).sample(0).batches == ()


@pytest.mark.parametrize(
    "sql,rows",
    [
        ("SELECT 1", 1),
        ("  select   1 ;", 1),
        ("SELECT * FROM sample", 1000),
        ("select * from SAMPLE limit 7", 7),
        ("SELECT * FROM sample LIMIT 5000", 1000),
        ("SELECT COUNT(*) FROM sample", 1),
        ("SELECT sleep(0.5)", 1),
    ],
)
def test_plan_understands_documented_queries(sql: str, rows: int) -> None:
    assert R.plan(sql, R.ResultCache(256)).row_count == rows


def test_plan_scalar_alias_and_value() -> None:
    res = R.plan("SELECT 42 AS answer", R.ResultCache(256))
    _, fields = get_query_columns_info(io.BytesIO(res.metadata))
    assert fields[0].get_name() == "answer"
    assert read_rows_from_chunk(fields, res.batches[0]) == [[42]]


def test_plan_caps_sleep_and_marks_fail() -> None:
    assert R.plan("select sleep(99999)", R.ResultCache(256)).run_seconds == R.MAX_SLEEP_S
    assert R.plan("SELECT fail()", R.ResultCache(256)) is R.FAIL_RESULT


@pytest.mark.parametrize(
    "sql",
    [
        "",
        "SELECT name FROM sample",
        "DROP TABLE sample",
        "SELECT 1; SELECT 2",
        "SELECT " + "9" * 40,
        "x" * 100_000,
    ],
)
def test_plan_rejects_anything_else(sql: str) -> None:
    with pytest.raises(R.QueryError, match="unsupported query"):
        R.plan(sql, R.ResultCache(256))


def test_result_cache_is_bounded() -> None:
    cache = R.ResultCache(256)
    for n in range(600):
        cache.sample(n)
    assert len(cache._cache) <= 257


def test_batch_rows_must_be_positive() -> None:
    with pytest.raises(ValueError):
        R.ResultCache(0)


def test_wide_result_has_ten_columns_in_batches_and_is_capped() -> None:
    cache = R.ResultCache(batch_rows=1000)
    res = R.plan("SELECT * FROM wide LIMIT 2500", cache)
    assert res.row_count == 2500
    assert R.chunk_rows(res.batches) == [1000, 1000, 500]
    rowcount, fields = get_query_columns_info(io.BytesIO(res.metadata))
    assert (
        rowcount == 2500
        and [f.get_field_type() for f in fields][:6]
        == ["LONG", "INTEGER", "DOUBLE", "STRING", "DATETIME", "BOOLEAN"]
        and len(fields) == 10
    )
    assert R.plan("select * from WIDE limit 2500;", cache) is res  # built once, reused
    assert (
        R.plan(f"SELECT * FROM wide LIMIT {R.WIDE_MAX_ROWS + 5}", R.ResultCache(50_000)).row_count
        == R.WIDE_MAX_ROWS
    )
    for n in (10, 20, 30):  # only the latest two sizes stay built
        cache.wide(n)
    assert sorted(cache._wide) == [20, 30]
