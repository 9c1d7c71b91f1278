"""instrument() first, the connector imported afterwards: the hooks must be in effect.

Run as a script (a fresh interpreter, so the connector is really not imported yet); prints one
JSON line with what the recorder saw.
"""

from __future__ import annotations

import json
import sys

import e6observe

assert "e6data_python_connector" not in sys.modules, "connector imported too early"
rec = e6observe.instrument(otel=False)
# e6observe.instrument() may import the connector itself; the application imports it now.
from e6data_python_connector import Connection  # noqa: E402

from e6observe import metrics as M  # noqa: E402
from e6observe.sim import Simulator  # noqa: E402

with Simulator() as sim:
    conn = Connection(host=sim.host, port=sim.port, username="app@example.com", password="pw")
    cur = conn.cursor()
    cur.execute("SELECT 1")
    rows = cur.fetchall()
    cur.clear()
    sim.flip(announce=False)
    cur = conn.cursor()
    cur.execute("SELECT 2")
    rows += cur.fetchall()
    cur.clear()
    conn.close()
    mismatches_sim = sim.counters()["mismatches_total"]

out = {
    "rows": rows,
    "switches": {"|".join(k): c.value for k, c in rec.family(M.SWITCHES).items() if c.value},
    "mismatches": sum(c.value for _, c in rec.family(M.MISMATCHES).items()),
    "mismatches_sim": mismatches_sim,
    "rpc_ok": sum(h.count for k, h in rec.family(M.RPC_DURATION).items() if k[2] == "OK"),
    "queries": {"|".join(k): h.count for k, h in rec.family(M.QUERY_DURATION).items() if h.count},
}
e6observe.uninstrument()
print(json.dumps(out))
