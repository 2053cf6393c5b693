"""Helpers shared by the test suite: local Postgres databases, Delta readers, polling with timeouts."""
