"""Shared datastore layer: key space, validated models, etcd client, syncer and IPAM.

Every program of the node talks to the others only through what this package
reads and writes, so the datamodel contract lives here and nowhere else.
"""
