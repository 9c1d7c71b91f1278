"""Result sets of the simulator and their wire encoding.

The connector decodes two payloads (``e6data_python_connector.datainputstream``):

* result metadata: a big-endian int64 row count, a big-endian int32 field count, then per field
  four strings (name, type, zone, format), each a big-endian uint16 length followed by UTF-8
  bytes;
* result batches: one thrift-binary ``e6x_vector.Chunk`` per batch, one ``Vector`` per column.

An empty batch (zero bytes) ends a result for ``getNextResultBatch``.

The queries the simulator understands are listed in :func:`plan`; everything here is
deterministic so tests can compute the expected rows independently with :func:`sample_row`.
"""

from __future__ import annotations

import datetime as _dt
import re
import struct
import threading
from dataclasses import dataclass
from typing import Any, Callable, List, Sequence, Tuple

from e6data_python_connector.e6x_vector import ttypes as vt
from thrift.protocol import TBinaryProtocol
from thrift.transport import TTransport

#: Rows in the ``sample`` table.
SAMPLE_ROWS = 1000
#: Largest ``sleep(x)`` the simulator honours, in seconds (keeps tests and servers bounded).
MAX_SLEEP_S = 30.0
#: First ``created_at`` value of the sample table (UTC).
SAMPLE_EPOCH = _dt.datetime(2024, 1, 1, tzinfo=_dt.timezone.utc)

_US = 1_000_000

#: Largest ``wide`` result the simulator builds (rows); keeps one result's memory bounded.
WIDE_MAX_ROWS = 200_000


@dataclass(frozen=True)
class Column:
    """One result column: its name and the type name the connector switches on."""

    name: str
    type: str  # LONG, INTEGER, DOUBLE, STRING, DATE, DATETIME, BOOLEAN


#: Columns of the ``sample`` table, in order.
SAMPLE_COLUMNS: Tuple[Column, ...] = (
    Column("id", "LONG"),
    Column("name", "STRING"),
    Column("qty", "INTEGER"),
    Column("price", "DOUBLE"),
    Column("created_at", "DATETIME"),
    Column("day", "DATE"),
    Column("active", "BOOLEAN"),
    Column("note", "STRING"),
)


def sample_row(i: int) -> Tuple[Any, ...]:
    """Row ``i`` (0-based) of the sample table as Python values (None = SQL NULL).

    ``created_at`` is an aware UTC ``datetime`` and ``day`` a ``date``; the connector returns both
    as ISO strings (see docs/simulator.md). Nulls are spread over several columns so that every
    column type carries some.
    """
    created = SAMPLE_EPOCH + _dt.timedelta(seconds=3600 * i + 7, microseconds=125_000 * (i % 8))
    return (
        i + 1,
        None if i % 23 == 20 else f"item-{i + 1:04d}",
        None if i % 7 == 3 else (i * 37) % 1000 - 500,
        None if i % 11 == 5 else round(i * 1.25 + 0.5, 2),
        None if i % 13 == 9 else created,
        None if i % 17 == 2 else created.date(),
        None if i % 19 == 4 else i % 2 == 0,
        None if i % 5 == 0 else "ünïcödé ✓" if i % 5 == 1 else f"note {i}",
    )


#: Columns of the ``wide`` table (large-result benchmarks): ten columns of five types.
WIDE_COLUMNS: Tuple[Column, ...] = (
    Column("id", "LONG"),
    Column("k", "INTEGER"),
    Column("amount", "DOUBLE"),
    Column("label", "STRING"),
    Column("ts", "DATETIME"),
    Column("flag", "BOOLEAN"),
    Column("ref", "LONG"),
    Column("ratio", "DOUBLE"),
    Column("code", "STRING"),
    Column("day", "DATE"),
)


def wide_row(i: int) -> Tuple[Any, ...]:
    """Row ``i`` (0-based) of the ``wide`` table; every hundredth row carries nulls."""
    ts = SAMPLE_EPOCH + _dt.timedelta(seconds=60 * i)
    null = i % 100 == 99
    return (
        i + 1,
        (i * 7919) % 100_000 - 50_000,
        None if null else i * 0.5 + 0.25,
        f"label-{i % 1000:03d}",
        None if null else ts,
        i % 3 == 0,
        (i * 31) % 1_000_003,
        i / (i + 1),
        None if null else f"c{i % 97}",
        ts.date(),
    )


# ----------------------------------------------------------------------------------------------
# encoding


def _utf(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack(">H", len(b)) + b


def encode_metadata(columns: Sequence[Column], row_count: int) -> bytes:
    """The ``resultMetaData`` payload for ``columns`` and ``row_count``."""
    parts = [struct.pack(">qi", row_count, len(columns))]
    for c in columns:
        zone = "UTC" if c.type in ("DATE", "DATETIME") else ""
        parts.append(_utf(c.name) + _utf(c.type) + _utf(zone) + _utf(""))
    return b"".join(parts)


def _micros(v: Any) -> int:
    if isinstance(v, _dt.datetime):
        delta = v - _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
    else:  # a date: midnight UTC
        delta = v - _dt.date(1970, 1, 1)
    return (delta.days * 86400 + delta.seconds) * _US + delta.microseconds


def _vector(col: Column, values: Sequence[Any]) -> vt.Vector:
    n = len(values)
    nulls = [v is None for v in values]
    data = vt.Data()
    t = col.type
    if t == "LONG":
        vtype = vt.VectorType.LONG
        data.int64Data = vt.Int64Data(data=[0 if v is None else int(v) for v in values])
    elif t == "INTEGER":
        vtype = vt.VectorType.INTEGER
        data.int32Data = vt.Int32Data(data=[0 if v is None else int(v) for v in values])
    elif t == "DOUBLE":
        vtype = vt.VectorType.DOUBLE
        data.float64Data = vt.Float64Data(data=[0.0 if v is None else float(v) for v in values])
    elif t == "STRING":
        vtype = vt.VectorType.STRING
        data.varcharData = vt.VarcharData(data=["" if v is None else str(v) for v in values])
    elif t == "BOOLEAN":
        vtype = vt.VectorType.BOOLEAN
        data.boolData = vt.BoolData(data=[bool(v) for v in values])
    elif t == "DATETIME":
        vtype = vt.VectorType.DATETIME
        data.timeData = vt.TimeData(data=[0 if v is None else _micros(v) for v in values])
    elif t == "DATE":
        vtype = vt.VectorType.DATE
        data.dateData = vt.DateData(data=[0 if v is None else _micros(v) for v in values])
    else:  # pragma: no cover - columns are defined in this module
        raise ValueError(f"unsupported column type {t}")
    return vt.Vector(size=n, vectorType=vtype, nullSet=nulls, data=data, isConstantVector=False)


def encode_chunk(columns: Sequence[Column], rows: Sequence[Sequence[Any]]) -> bytes:
    """One thrift-binary ``Chunk`` holding ``rows`` (column-major on the wire)."""
    chunk = vt.Chunk(
        size=len(rows), vectors=[_vector(c, [r[j] for r in rows]) for j, c in enumerate(columns)]
    )
    buf = TTransport.TMemoryBuffer()
    chunk.write(TBinaryProtocol.TBinaryProtocolAccelerated(buf))
    return bytes(buf.getvalue())


# ----------------------------------------------------------------------------------------------
# result sets


@dataclass(frozen=True)
class Result:
    """An encoded result: metadata bytes and the batches ``getNextResultBatch`` hands out."""

    metadata: bytes
    batches: Tuple[bytes, ...]
    row_count: int
    #: seconds the query "runs" in executeStatement (``sleep(x)``)
    run_seconds: float = 0.0


class QueryError(Exception):
    """A query the simulator rejects; ``details`` is the gRPC status text."""

    def __init__(self, details: str) -> None:
        super().__init__(details)
        self.details = details


class ResultCache:
    """Encodes results on first use and keeps them: results are immutable and shared."""

    def __init__(self, batch_rows: int) -> None:
        if batch_rows < 1:
            raise ValueError("batch_rows must be >= 1")
        self.batch_rows = batch_rows
        self._lock = threading.Lock()
        self._cache: dict[Tuple[str, int], Result] = {}
        #: large ``wide`` results, kept apart and only the latest two (each up to ~10 MB)
        self._wide: dict[int, Result] = {}

    def _get(self, key: Tuple[str, int], build: Callable[[], Result]) -> Result:
        r = self._cache.get(key)
        if r is None:
            r = build()
            with self._lock:
                if len(self._cache) > 256:  # bounded: LIMIT n can take many values
                    self._cache.clear()
                self._cache[key] = r
        return r

    def scalar(self, value: int, name: str) -> Result:
        cols = (Column(name, "LONG"),)
        return self._get(
            ("scalar:" + name, value),
            lambda: Result(encode_metadata(cols, 1), (encode_chunk(cols, [(value,)]),), 1),
        )

    def sample(self, limit: int) -> Result:
        n = max(0, min(limit, SAMPLE_ROWS))

        def build() -> Result:
            rows = [sample_row(i) for i in range(n)]
            step = self.batch_rows
            batches = tuple(encode_chunk(SAMPLE_COLUMNS, rows[k : k + step]) for k in range(0, n, step))
            return Result(encode_metadata(SAMPLE_COLUMNS, n), batches, n)

        return self._get(("sample", n), build)

    def count(self) -> Result:
        return self.scalar(SAMPLE_ROWS, "count")

    def wide(self, limit: int) -> Result:
        """The first ``limit`` rows (at most :data:`WIDE_MAX_ROWS`) of the ``wide`` table."""
        n = max(0, min(limit, WIDE_MAX_ROWS))
        with self._lock:
            r = self._wide.get(n)
        if r is not None:
            return r
        step = self.batch_rows
        batches = []
        for k in range(0, n, step):
            batches.append(encode_chunk(WIDE_COLUMNS, [wide_row(i) for i in range(k, min(n, k + step))]))
        r = Result(encode_metadata(WIDE_COLUMNS, n), tuple(batches), n)
        with self._lock:
            while len(self._wide) >= 2:
                self._wide.pop(next(iter(self._wide)))
            self._wide[n] = r
        return r


_WS = re.compile(r"\s+")
_SCALAR = re.compile(r"^select (-?\d{1,18})(?: as (\w{1,64}))?$")
_SAMPLE = re.compile(r"^select \* from sample(?: limit (\d{1,9}))?$")
_WIDE = re.compile(r"^select \* from wide limit (\d{1,9})$")
_COUNT = re.compile(r"^select count\(\*\) from sample$")
_SLEEP = re.compile(r"^select sleep\((\d{1,5}(?:\.\d{1,6})?)\)$")
_FAIL = re.compile(r"^select fail\(\)$")


def normalize(sql: str) -> str:
    """Lower-case, whitespace-collapsed SQL without a trailing semicolon."""
    s = _WS.sub(" ", sql.strip().lower())
    return s[:-1].rstrip() if s.endswith(";") else s


def plan(sql: str, cache: ResultCache) -> Result:
    """The result of ``sql``, or :class:`QueryError` for anything the simulator does not know.

    Understood (case and whitespace insensitive, optional trailing ``;``):

    * ``SELECT <integer> [AS name]`` - one LONG column (named ``name`` or the literal), one row;
    * ``SELECT * FROM sample [LIMIT n]`` - the 1000-row sample table (see :func:`sample_row`);
    * ``SELECT COUNT(*) FROM sample`` - one LONG column ``count`` = 1000;
    * ``SELECT * FROM wide LIMIT n`` - ``n`` rows (at most 200 000) of ten columns
      (see :func:`wide_row`), for large-result benchmarks;
    * ``SELECT sleep(x)`` - ``executeStatement`` takes ``x`` seconds (at most 30), result 1;
    * ``SELECT fail()`` - ``executeStatement`` fails with ``INTERNAL`` ``simulated query failure``.

    Anything else fails in ``prepareStatement`` with ``INVALID_ARGUMENT``.
    """
    s = normalize(sql)
    m = _SCALAR.match(s)
    if m:
        return cache.scalar(int(m.group(1)), m.group(2) or m.group(1))
    m = _SAMPLE.match(s)
    if m:
        return cache.sample(SAMPLE_ROWS if m.group(1) is None else int(m.group(1)))
    if _COUNT.match(s):
        return cache.count()
    m = _WIDE.match(s)
    if m:
        return cache.wide(int(m.group(1)))
    m = _SLEEP.match(s)
    if m:
        base = cache.scalar(1, "sleep")
        return Result(base.metadata, base.batches, 1, min(float(m.group(1)), MAX_SLEEP_S))
    if _FAIL.match(s):
        return FAIL_RESULT
    raise QueryError("simulator: unsupported query (see docs/simulator.md)")


#: Marker result: executeStatement fails.
FAIL_RESULT = Result(b"", (), 0, -1.0)


def chunk_rows(batches: Sequence[bytes]) -> List[int]:
    """Row counts of encoded batches (for tests and debugging)."""
    out: List[int] = []
    for b in batches:
        c = vt.Chunk()
        c.read(TBinaryProtocol.TBinaryProtocolAccelerated(TTransport.TMemoryBuffer(b)))
        out.append(int(c.size or 0))
    return out
