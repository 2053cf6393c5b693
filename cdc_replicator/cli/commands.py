"""Command line: run / snapshot / verify / maintain / status / migrate / teardown / demo. Maps ReplicatorError to its exit code; no logic here."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import ParamSpec, TypeVar

import click

from cdc_replicator import __version__
from cdc_replicator.config import Config, load_config
from cdc_replicator.errors import ConfigError, ReplicatorError
from cdc_replicator.service.log import setup_logging

__all__ = ["main"]

logger = logging.getLogger("cdc_replicator")

P = ParamSpec("P")
R = TypeVar("R")


def _errors_to_exit(fn: Callable[P, R]) -> Callable[P, R]:
    """Print a ReplicatorError as one clear message (plus its hint) and exit with its code."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ReplicatorError as exc:
            click.echo(error_line(_with_config(exc.message), _with_config(exc.hint)), err=True)
            sys.exit(exc.exit_code)

    return wrapper


def error_line(message: str, hint: str = "") -> str:
    """The one line a refused command prints last on stderr: ``error: <what>; hint: <fix>``.

    One line, so that a journal, a log shipper or ``tail -1`` keeps the whole of it: a message or
    hint that spans lines (a server's detail) is joined with spaces.
    """

    def flat(text: str) -> str:
        return " ".join(part.strip() for part in text.splitlines() if part.strip())

    if not hint.strip():
        return f"error: {flat(message)}"
    what = flat(message)
    return (
        f"error: {what[:-1] if what.endswith('.') and not what.endswith('..') else what}; hint: {flat(hint)}"
    )


def _with_config(text: str) -> str:
    """Hints say ``--config FILE``; name the file this command was given instead."""
    ctx = click.get_current_context(silent=True)
    path = ctx.find_root().obj.get("config_path") if ctx is not None and ctx.find_root().obj else None
    if path is None:
        return text.replace("cdc-replicator --config FILE ", "cdc-replicator ")
    return text.replace("--config FILE", f"--config {path}")


def _load(ctx: click.Context) -> Config:
    path: Path | None = ctx.obj["config_path"]
    cfg = load_config(path)
    setup_logging(ctx.obj["log_level"] or cfg.log.level, cfg.log.format)
    return cfg


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cdc-replicator")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="CDC_REPLICATOR_CONFIG",
    help="TOML config file (env CDC_REPLICATOR_CONFIG). Without it, every key comes from CDC_REPLICATOR_* variables.",
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, log_level: str | None) -> None:
    """Copy PostgreSQL tables into Delta Lake tables and keep them in step, exactly once."""
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path
    ctx.obj["log_level"] = log_level


@cli.command()
@click.option(
    "--once",
    is_flag=True,
    help="Watermark mode: poll every table until it has nothing new, then exit (a catch-up, e.g. from cron).",
)
@click.pass_context
@_errors_to_exit
def run(ctx: click.Context, once: bool) -> None:
    """Stream changes into Delta (loading every table first on the first run)."""
    from cdc_replicator.service.daemon import SystemdNotifier, install_signal_handlers

    stop = threading.Event()
    install_signal_handlers(stop)  # first: a SIGTERM during start-up still stops cleanly
    cfg = _load(ctx)  # before the heavy imports: a bad config is refused at once
    if once and cfg.source.mode != "watermark":
        raise ConfigError(
            'run --once: only for source.mode = "watermark" (in logical mode the stream never ends)',
            hint='drop --once and stop the daemon with SIGTERM, or set source.mode = "watermark"',
        )

    from cdc_replicator.engine.pipeline import Replicator
    from cdc_replicator.service.health import HealthState, Phase
    from cdc_replicator.service.metrics import Metrics
    from cdc_replicator.service.runtime import tune_gc
    from cdc_replicator.service.server import HealthServer

    install_signal_handlers(stop, grace_seconds=cfg.server.stop_timeout_seconds)
    health = HealthState(cfg.table_ids, liveness_timeout=cfg.server.liveness_timeout_seconds)
    metrics = Metrics(health, cfg.table_ids)
    server = HealthServer(cfg.server, health, metrics) if cfg.server.enabled else None
    notifier = SystemdNotifier()

    def on_phase(phase: Phase, error: str | None) -> None:
        # READY once the source checks passed: an initial load may take hours, longer than any
        # start timeout; systemd's STATUS= line says what the daemon is doing meanwhile
        text = phase.value + (f": {error}" if error else "")
        if phase in (Phase.LOADING, Phase.STREAMING):
            notifier.ready(text)
        elif phase is Phase.STOPPING:
            notifier.stopping()
        else:
            notifier.status(text)

    health.add_listener(on_phase)
    if server is not None:
        server.start()
    notifier.start_watchdog(health.alive)
    rep = Replicator(cfg, stop=stop, health=health, metrics=metrics)
    tune_gc()
    try:
        rep.run(once=once)
    finally:
        rep.close()
        notifier.close()
        if server is not None:
            server.stop()
    logger.info("stopped cleanly")


@cli.command()
@click.option(
    "--table",
    "tables",
    multiple=True,
    metavar="SCHEMA.TABLE",
    help="Load only these configured tables (repeatable). Default: every table, recreating the slot.",
)
@click.option(
    "--parallel",
    type=click.IntRange(min=1),
    default=None,
    help="Connections copying at once (default: snapshot.parallel, else one per core, at most 4).",
)
@click.pass_context
@_errors_to_exit
def snapshot(ctx: click.Context, tables: tuple[str, ...], parallel: int | None) -> None:
    """Load tables into Delta: fast, parallel, resumable (run it again after an interruption).

    Without --table (stop the daemon first), every table is reloaded and the slot recreated. With
    --table, only those tables are reloaded and the daemon's slot is kept: while the daemon streams,
    it re-syncs them live (not a paused table: stop the daemon for that); otherwise they are loaded
    here and the daemon continues where it was. In watermark mode stop the daemon first.
    """
    from cdc_replicator.model import TableId
    from cdc_replicator.service.daemon import install_signal_handlers

    stop = threading.Event()
    install_signal_handlers(stop)
    cfg = _load(ctx)
    try:
        wanted = [TableId.parse(t) for t in tables] or None
    except ValueError as exc:
        raise ConfigError(f"--table: {exc}", hint="name a configured table as schema.table") from exc
    unknown = [str(t) for t in wanted or () if t not in cfg.table_ids]
    if unknown:  # before anything is opened or created
        raise ConfigError(
            f"--table {', '.join(unknown)}: not a configured table "
            f"(configured: {', '.join(str(t) for t in cfg.table_ids)})",
            hint="add it to [[tables]] first (the daemon must know the tables it streams), or fix the name",
        )

    from cdc_replicator.cli.progress import LoadProgress, render_summary
    from cdc_replicator.engine.pipeline import Replicator

    rep = Replicator(cfg, stop=stop)
    progress = LoadProgress()
    try:
        with progress:
            rep.snapshot(wanted, parallel=parallel, progress=progress)
    finally:
        rep.close()
    click.echo(render_summary(progress.summary()), err=True)
    n = len(wanted or cfg.tables)
    click.echo(_with_config(f"loaded {n} table(s); start the daemon with: cdc-replicator --config FILE run"))


@cli.command()
@click.option(
    "--table",
    "tables",
    multiple=True,
    metavar="SCHEMA.TABLE",
    help="Verify only these configured tables (repeatable). Default: every table.",
)
@click.option(
    "--repair",
    is_flag=True,
    help="Rewrite the rows found different through the running daemon's stream, then verify again.",
)
@click.pass_context
@_errors_to_exit
def verify(ctx: click.Context, tables: tuple[str, ...], repair: bool) -> None:
    """Prove each Delta table equals its source, range by range, while the daemon streams.

    Exit 0: every table is equal; 8: a difference was found (and, with --repair, is still there
    after the repair); 3: the source cannot be read, or Delta did not reach its snapshot in time.
    """
    from cdc_replicator.cli.verify_report import render_verdict
    from cdc_replicator.engine.verify import run_verify
    from cdc_replicator.errors import LakeDiffers
    from cdc_replicator.model import TableId
    from cdc_replicator.service.daemon import install_signal_handlers

    stop = threading.Event()
    install_signal_handlers(stop)
    cfg = _load(ctx)
    try:
        wanted = [TableId.parse(t) for t in tables] or None
    except ValueError as exc:
        raise ConfigError(f"--table: {exc}") from exc
    unknown = [str(t) for t in wanted or () if t not in cfg.table_ids]
    if unknown:
        raise ConfigError(
            f"--table: {', '.join(unknown)} is not a configured table",
            hint="name tables listed in [[tables]] of the config",
        )
    verdicts = run_verify(
        cfg,
        wanted,
        repair=repair,
        stop=stop,
        report=lambda v, schema, label: click.echo(render_verdict(v, schema.key, label=label)),
    )
    different = [v.table for v in verdicts if not v.equal]
    if different:
        raise LakeDiffers(
            f"{len(different)} table(s) differ from the source: {', '.join(different)}",
            hint="repair through the running daemon: cdc-replicator --config FILE verify --repair "
            + " ".join(f"--table {t}" for t in different),
        )
    click.echo(f"verify: {len(verdicts)} table(s) equal to the source")


@cli.command()
@click.option(
    "--table",
    "tables",
    multiple=True,
    metavar="SCHEMA.TABLE",
    help="Maintain only these configured tables (repeatable). Default: every table.",
)
@click.pass_context
@_errors_to_exit
def maintain(ctx: click.Context, tables: tuple[str, ...]) -> None:
    """One lake maintenance pass now: compaction, checkpoint + expired-log cleanup, vacuum (for cron).

    Run it with the daemon stopped, or beside it: Delta's commit conflict check protects the data
    (a merge of the daemon that loses is retried from the new version). One line per table.
    """
    from cdc_replicator.engine.maintain import maintain_now
    from cdc_replicator.model import TableId

    cfg = _load(ctx)
    try:
        wanted = tuple(TableId.parse(t) for t in tables) or cfg.table_ids
    except ValueError as exc:
        raise ConfigError(f"--table: {exc}", hint="name a configured table as schema.table") from exc
    unknown = [str(t) for t in wanted if t not in cfg.table_ids]
    if unknown:
        raise ConfigError(
            f"--table {', '.join(unknown)}: not a configured table "
            f"(configured: {', '.join(str(t) for t in cfg.table_ids)})",
            hint="name tables listed in [[tables]] of the config",
        )
    failed = maintain_now(cfg, wanted, report=lambda _t, line: click.echo(line))
    if failed:  # each table had its line; the first failure says what to fix
        raise failed[0]
    click.echo(f"maintain: {len(wanted)} table(s) maintained")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@_errors_to_exit
def status(ctx: click.Context, as_json: bool) -> None:
    """Where each table stands (read from the Delta commits and the source), whether or not a daemon runs."""
    from cdc_replicator.cli.status import collect_status, render_status

    cfg = _load(ctx)
    report = collect_status(cfg)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    click.echo(render_status(report))


@cli.command()
@click.option(
    "--source/--no-source",
    "on_source",
    default=True,
    show_default=True,
    help="Also apply the source migrations (the cdc_replicator schema and heartbeat table).",
)
@click.pass_context
@_errors_to_exit
def migrate(ctx: click.Context, on_source: bool) -> None:
    """Apply the pending migrations: the state store's, and (by default) the source's. Each runs once."""
    from cdc_replicator.source import checks, objects
    from cdc_replicator.store.state import StateStore, migrations_dir

    cfg = _load(ctx)
    store = StateStore(cfg.state.url)  # applies the state store's pending migrations on open
    try:
        click.echo("state store: up to date")
    finally:
        store.close()
    if not on_source:
        return
    src = cfg.source
    with checks.connect(
        src.dsn, connect_timeout=src.connect_timeout_seconds, silence_timeout=src.wal_receiver_timeout_seconds
    ) as conn:
        applied = objects.apply_source_migrations(conn, migrations_dir("source"))
    click.echo(f"source: applied {', '.join(applied)}" if applied else "source: up to date")


@cli.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--drop-schema", is_flag=True, help="Also drop the cdc_replicator schema (heartbeat table).")
@click.pass_context
@_errors_to_exit
def teardown(ctx: click.Context, yes: bool, drop_schema: bool) -> None:
    """Drop the replication slot and publication on the source (stop the daemon first).

    The Delta tables are kept and the state store forgets the slot: afterwards `run` refuses to
    start on those tables until a full re-sync (`cdc-replicator snapshot`) rebuilds them from a new
    slot. Without the slot the source no longer keeps WAL for cdc-replicator.
    """
    from cdc_replicator.source import checks, objects
    from cdc_replicator.store.state import StateStore

    cfg = _load(ctx)
    src = cfg.source
    what = [f"replication slot {src.slot}", f"publication {src.publication}"]
    if drop_schema:
        what.append("schema cdc_replicator")
    if not yes:
        click.confirm(f"drop {', '.join(what)} on the source?", abort=True, err=True)
    with checks.connect(
        src.dsn, connect_timeout=src.connect_timeout_seconds, silence_timeout=src.wal_receiver_timeout_seconds
    ) as conn:
        dropped = objects.teardown(conn, slot=src.slot, publication=src.publication, drop_schema=drop_schema)
    store = StateStore(cfg.state.url)
    try:
        store.forget(src.slot)
    finally:
        store.close()
    click.echo(f"dropped: {', '.join(dropped)}" if dropped else "nothing to drop")


@cli.command()
@click.option(
    "--dir",
    "workdir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("./cdc-demo"),
    show_default=True,
    help="Where the demo keeps its lake and state.",
)
@click.option("--seconds", type=float, default=0.0, help="Stop after this long (0 = until Ctrl-C).")
@click.option(
    "--pg-version",
    type=click.Choice(["15", "16"]),
    default=None,
    help="Which local PostgreSQL binaries to use (default: the newest found).",
)
@_errors_to_exit
def demo(workdir: Path, seconds: float, pg_version: str | None) -> None:
    """Quickstart: a throwaway local PostgreSQL with live sample changes, replicated into ./cdc-demo/lake."""
    from cdc_replicator.demo.run import run_demo

    run_demo(workdir, seconds=seconds, pg_version=int(pg_version) if pg_version else None)


def main() -> None:
    """Run the CLI, then leave with ``os._exit``.

    delta-rs and Arrow keep native thread pools whose teardown at interpreter exit can abort the
    process ("terminate called without an active exception", delta-rs issue #2184) after all work is
    done; a daemon that stopped cleanly must still exit 0. Everything is flushed and closed first.
    """
    code = 0
    try:
        # not standalone: click would print a usage block of several lines; a usage error is one line too
        result = cli.main(prog_name="cdc-replicator", standalone_mode=False)
        code = result if isinstance(result, int) else 0  # --help, --version: ctx.exit's code
    except click.UsageError as exc:  # unknown command or option, a bad option value
        where = exc.ctx.command_path if exc.ctx is not None else "cdc-replicator"
        click.echo(error_line(exc.format_message(), f"see {where} --help"), err=True)
        code = exc.exit_code
    except click.ClickException as exc:
        click.echo(error_line(exc.format_message()), err=True)
        code = exc.exit_code
    except click.Abort:  # Ctrl-C or EOF at a prompt, or "no" to a confirmation
        click.echo("Aborted!", err=True)  # as click says it
        code = 1
    except SystemExit as exc:
        if isinstance(exc.code, int):
            code = exc.code
        elif exc.code is not None:
            print(exc.code, file=sys.stderr)
            code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
