"""A long-lived syncer client, run as its own process inside a test namespace.

The reliability tests need the client to live in a namespace on the etcd
fabric (the test process itself stays in the root namespace), and they must
prove it survives faults WITHOUT being restarted: so it runs once, prints one
JSON line per update on stdout (with the raw value the syncer holds), and one
status line per batch.  Logs go to stderr, where tests count them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys

from libcalico.datastore import DatastoreClient
from libcalico.syncer import Syncer


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main(prefixes: list[str]) -> None:
    client = DatastoreClient.from_env(timeout=float(os.environ.get("PROBE_TIMEOUT", "2")))
    syncer = Syncer(client, prefixes, min_backoff=0.1, max_backoff=1.0)
    emit({"kind": "started", "pid": os.getpid()})
    async for batch in syncer.batches():
        for u in batch:
            seen = syncer._seen.get(u.key) if u.key else None
            emit({"kind": u.kind, "key": u.key, "raw": seen.raw if seen else None, "error": u.error})
        emit({"kind": "status", "status": syncer.status, "resyncs": syncer.resyncs,
              "revision": syncer.revision, "endpoint_index": client._idx})


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(main(sys.argv[1:] or ["/calico/v1/policy/profile/"]))
