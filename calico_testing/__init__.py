"""Harness shared by tests/ and bench/: a real etcd, network namespaces, a multi-host cluster.

It lives outside tests/ so the benchmarks can build the same clusters the tests
do without importing the test suite, and outside the product packages
(setup.cfg installs only the programs and libcalico) because no program may
depend on it.
"""
