"""Write many keys fast (transactions of 100 puts), run inside a test namespace: `{key: value}` JSON on stdin."""

from __future__ import annotations

import asyncio
import json
import sys

from libcalico.datastore import DatastoreClient, op_put


async def main() -> None:
    kv = json.load(sys.stdin)
    client = DatastoreClient.from_env(timeout=10)
    items = list(kv.items())
    for i in range(0, len(items), 100):
        await client.txn([], [op_put(k, v) for k, v in items[i:i + 100]])
    await client.close()
    print(len(items))


if __name__ == "__main__":
    asyncio.run(main())
