"""Test harness shared by integration and system tests: real etcd, namespaces, processes."""
