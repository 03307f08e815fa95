"""Client core: connection, KV, lease, watch. Depends only on the wire layer."""

import os

# grpc's fork handlers run in every child forked while its threads are busy, between fork and exec, and
# can abort the child there (seen starting etcd from a process with live watch streams). grpc.aio does
# not support fork anyway, so they buy us nothing. Read by grpc when it starts: set before its import.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
