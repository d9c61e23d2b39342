"""Test-only helpers (faults, an etcd cluster, calculator feeds); the harness bench/ also uses is calico_testing."""
