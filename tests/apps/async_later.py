"""A sync application that imports the connector's async API only later (or never).

Run as a script (a fresh interpreter). instrument() must not load the connector's async modules;
once the application imports them, the asyncio and async-pool hooks are in place and an async
query is measured. Prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import sys

from e6data_python_connector import Connection

import e6observe
from e6observe import metrics as M
from e6observe.sim import Simulator


def async_modules() -> list[str]:
    return sorted(m for m in sys.modules if m.startswith("e6data_python_connector.async"))


out: dict[str, object] = {}
rec = e6observe.instrument(otel=False)
assert rec is not None
out["async_after_instrument"] = async_modules()
with Simulator() as sim:
    conn = Connection(host=sim.host, port=sim.port, username="app@example.com", password="pw")
    cur = conn.cursor()
    cur.execute("SELECT 1")
    out["sync_rows"] = cur.fetchall()
    cur.clear()
    out["async_after_sync_query"] = async_modules()
    if "--use-async" in sys.argv:
        from e6data_python_connector import aio
        from e6data_python_connector.async_connection_pool import AsyncConnectionPool

        from e6observe.hooks import pool

        async def main() -> object:
            c = await aio.connect(host=sim.host, port=sim.port, username="app@example.com", password="pw")
            try:
                acur = c.cursor()
                await acur.execute("SELECT 2")
                rows = await acur.fetchall()
                await acur.close()
                return rows
            finally:
                await c.close()

        out["async_rows"] = asyncio.run(main())
        out["aio_pool_patched"] = pool.HOOK.patches.patched(AsyncConnectionPool)
    out["queries"] = {"|".join(k): h.count for k, h in rec.family(M.QUERY_DURATION).items() if h.count}
e6observe.uninstrument()
out["watches_left"] = [type(f).__name__ for f in sys.meta_path if type(f).__module__.startswith("e6observe")]
print(json.dumps(out))
