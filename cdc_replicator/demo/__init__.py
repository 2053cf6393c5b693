"""The README's demo: a throwaway local PostgreSQL with live sample changes, replicated into a local lake.

Dev tooling, not the runtime: the rest of the package imports none of it, except the
``cdc-replicator demo`` command (``run.run_demo``). Its modules, one job each:

- ``run``: the run itself (directory, server, threads, progress, orderly stop, final check);
- ``shop``: the sample database (tables, seed rows, the counts and positions read back);
- ``workload``: the thread writing live sample transactions;
- ``lake``: reading the Delta tables while the replicator writes them;
- ``display``: the text the demo prints (pure);
- ``workdir``: the ``--dir`` the lake and state live in (one run at a time);
- ``localpg`` and ``pgbin``: a throwaway local PostgreSQL server. **Shared with the test suite**
  (its session clusters, ``tests/conftest.py``) and the benchmarks; the test-only extras (crash,
  restart, standbys) live in ``tests/support/cluster.py``.
"""

from __future__ import annotations

from cdc_replicator.errors import ReplicatorError

__all__ = ["DemoError"]


class DemoError(ReplicatorError):
    """The demo could not run, or its final check found Delta and the source apart."""
