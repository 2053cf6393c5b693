"""Schema changes in the stream: follow each table's layout, or pause the table, as its contract says.

A pgoutput Relation message announces a table's layout before the first row written in it. The
follower compares it with the layout the Delta table holds (the schema history's last entry) and
decides with ``engine.contracts.decide``: evolve the Delta table, accept, or pause the table. The
rows buffered in the old layout are applied first (a batch never mixes layouts); a paused table's
confirm cap is the end of the last transaction before the change, so the slot keeps the rest.
Called from the stream loop's thread only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace

from cdc_replicator.engine.batching import Batcher
from cdc_replicator.engine.checkpoint import Checkpointer
from cdc_replicator.engine.contracts import Contract, Decision, decide, schema_from_json, schema_to_json
from cdc_replicator.model import ChangeBatch, Lsn, RelationChanged, TableId, TableSchema
from cdc_replicator.service import failpoints
from cdc_replicator.sink import OffsetStore, Sink
from cdc_replicator.store.state import StateStore
from cdc_replicator.types import resolve_domains, unresolved_types

__all__ = ["SchemaFollower"]

logger = logging.getLogger(__name__)

Domains = Mapping[int, tuple[int, int]]  # domain oid -> (base type oid, type modifier)


class SchemaFollower:
    """Tracks the layout each Delta table holds and decides on every Relation message."""

    def __init__(
        self,
        *,
        slot: str,
        contracts: Mapping[TableId, Contract],
        sink: Sink,
        offsets: OffsetStore,
        history: StateStore,
        checkpointer: Checkpointer,
        load_domains: Callable[[], Domains],
        on_pause: Callable[[TableId, str], None],
    ) -> None:
        self._slot = slot
        self._contracts = contracts
        self._sink = sink
        self._offsets = offsets
        self._history = history
        self._checkpointer = checkpointer
        self._load_domains = load_domains
        self._on_pause = on_pause
        self._domains: Domains | None = None
        self._applied: dict[TableId, TableSchema] = {}  # the layout each Delta table holds

    def start(self, schemas: Mapping[TableId, TableSchema]) -> None:
        """The layout each Delta table holds: the schema history's, else the catalog's (recorded)."""
        for t, schema in schemas.items():
            saved = self._history.applied_schema(self._slot, t)
            if saved is None:
                self._history.record_schema(self._slot, t, decision="load", new_schema=schema_to_json(schema))
                self._applied[t] = schema
            else:
                self._applied[t] = schema_from_json(saved)

    def on_relation(
        self, ev: RelationChanged, txn_commit: Lsn, batcher: Batcher, flush: Callable[[ChangeBatch], None]
    ) -> None:
        """Follow the layout in ``ev`` (seen inside the transaction committed at ``txn_commit``).

        ``flush`` applies a batch now and waits for it (the rows buffered in the old layout).
        """
        table = ev.schema.table
        if table not in self._contracts or self._checkpointer.is_paused(table):
            return
        ev = replace(ev, schema=self._base_types(ev.schema))
        new = ev.schema
        old = self._applied.get(table)
        held = self._offsets.position(table)
        if old is None or (held is not None and held.holds(txn_commit, ev.seq + 1)):
            # the table already holds the first change after this layout (a replay after a restart
            # or a re-sync): nothing to decide. Holding only the changes before it (the cut made
            # at the change) is not enough: then it is decided again (evolving is idempotent).
            self._applied[table] = new
            self._flush(batcher.add(ev), flush)
            return
        decision = decide(self._contracts[table], old, new)
        if decision.action == "pause":
            self._pause(table, old, new, decision, txn_commit, batcher, flush)
            return
        self._flush(batcher.add(ev), flush)  # closes the rows buffered in the old layout
        if decision.action == "evolve":
            failpoints.hit("before_evolve")
            done = self._sink.evolve(new)
            logger.warning(
                "schema evolved table=%s lsn=%s changes=[%s] delta=[%s]",
                table,
                txn_commit,
                decision.summary,
                "; ".join(done) or "nothing to change",
            )
        if decision.changes:
            self._record(
                table, "evolve" if decision.action == "evolve" else "accept", txn_commit, decision, old, new
            )
        self._applied[table] = new

    def _pause(
        self,
        table: TableId,
        old: TableSchema,
        new: TableSchema,
        decision: Decision,
        txn_commit: Lsn,
        batcher: Batcher,
        flush: Callable[[ChangeBatch], None],
    ) -> None:
        # the old-layout changes still buffered go out first, with a position inside this
        # transaction at most: the table then holds nothing from the change on
        self._flush(batcher.close_table(table), flush)
        cap = batcher.last_end
        self._checkpointer.pause(table, cap, decision.reason)
        contract = self._contracts[table]
        logger.error(
            "table paused table=%s lsn=%s contract=%s changes=[%s]: %s; its changes are held back "
            "(nothing is lost: the slot keeps them from %s)",
            table,
            txn_commit,
            contract,
            decision.summary,
            decision.reason,
            cap,
        )
        self._on_pause(table, f"schema change at {txn_commit}: {decision.summary} ({decision.reason})")
        self._record(table, "pause", txn_commit, decision, old, new)

    @staticmethod
    def _flush(batch: ChangeBatch | None, flush: Callable[[ChangeBatch], None]) -> None:
        if batch is not None:
            flush(batch)

    def _record(
        self, table: TableId, what: str, lsn: Lsn, decision: Decision, old: TableSchema, new: TableSchema
    ) -> None:
        self._history.record_schema(
            self._slot,
            table,
            decision=what,
            lsn=lsn,
            changes=decision.summary,
            old_schema=schema_to_json(old),
            new_schema=schema_to_json(new),
        )

    def _base_types(self, schema: TableSchema) -> TableSchema:
        """Domain columns typed as their base type, as the catalog path types them (``read_schema``).

        The domains are read from the source when a Relation message names a type the daemon does
        not know yet (a domain created while it runs; enums and composites ask again, rarely).
        """
        if self._domains is None or unresolved_types(schema, self._domains):
            self._domains = self._load_domains()
        return resolve_domains(schema, self._domains)
