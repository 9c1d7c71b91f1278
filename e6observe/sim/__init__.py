"""The blue/green e6data cluster simulator (``e6observe sim``).

``Simulator`` is a real gRPC server on a loopback port that implements the engine service the
e6data connector calls, on the connector's own generated stubs and result types, and plays the
cluster side of blue/green switches (announce, complete with ``status: 456``, drain, schedule).

Queries it answers (case-insensitive, optional trailing ``;``):

* ``SELECT <integer> [AS name]`` - a scalar (one LONG column, one row);
* ``SELECT * FROM sample [LIMIT n]`` - 1000 rows of LONG, STRING, INTEGER, DOUBLE, DATETIME,
  DATE, BOOLEAN and STRING columns with NULLs, in batches of ``batch_rows`` (default 256);
* ``SELECT COUNT(*) FROM sample`` - 1000;
* ``SELECT sleep(x)`` - runs ``x`` seconds (at most 30) in executeStatement, then returns 1;
* ``SELECT fail()`` - executeStatement fails with ``INTERNAL``;
* anything else fails in prepareStatement with ``INVALID_ARGUMENT``.

Importing this package starts nothing. See docs/simulator.md.
"""

from __future__ import annotations

from .results import SAMPLE_COLUMNS, SAMPLE_ROWS, sample_row
from .server import MISMATCH_DETAILS, Simulator

__all__ = ["Simulator", "MISMATCH_DETAILS", "SAMPLE_COLUMNS", "SAMPLE_ROWS", "sample_row"]
