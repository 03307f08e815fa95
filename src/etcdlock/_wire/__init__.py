"""Generated etcd wire messages."""
