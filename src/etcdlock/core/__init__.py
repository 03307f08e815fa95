"""Client core: connection, KV, lease, watch. Depends only on the wire layer."""
