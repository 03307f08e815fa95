"""The etcdlock command line: run under a lock, inspect locks, soak, bench, start a local etcd."""
