"""Fixtures for the reliability tests: a 3-member etcd cluster and a syncer client process."""

from __future__ import annotations

import pytest

from tests.lib.etcd_cluster import EtcdCluster


@pytest.fixture
def etcd_cluster(netns_factory):
    """Three etcd members, each in its own namespace on a bridge; all removed at teardown."""
    cluster = EtcdCluster(netns_factory).start()
    yield cluster
    cluster.close()
