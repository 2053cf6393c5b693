"""The engine: batch, apply, confirm; the stream and polling loops, loads, re-syncs and the Replicator."""
