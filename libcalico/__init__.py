"""Shared datastore layer: key space, validated models, etcd client, syncer and IPAM.

Every program of the node talks to the others only through what this package
reads and writes, so the datamodel contract lives here and nowhere else.
"""

import os as _os

# gRPC's C core writes its own lines straight to stderr (e.g. ~20 "Corruption
# detected"/"BAD_CERTIFICATE" lines for one refused TLS handshake, again on every
# retry), which buries the one clear error our programs log and floods their logs
# during an outage.  Our errors already carry the cause; operators can still set
# GRPC_VERBOSITY=debug.  Must be set before grpc is first imported.
_os.environ.setdefault("GRPC_VERBOSITY", "NONE")
