"""Security: TLS to the source, a least-privilege role, and secrets that never show.

One PostgreSQL runs with ``ssl = on``, a certificate from a test CA made with ``openssl``, and ``hostssl`` lines
only in pg_hba.conf (``tests/support/tls.py``): nothing reaches it over TCP without TLS, and every
role but the fixtures' admin must give its password (scram-sha-256). The daemon connects as a role
made by running ``migrations/source/templates/replication_role.sql`` with psql, exactly as the
README says, on a database where PUBLIC may not even connect. That server is always Debian's
PostgreSQL 15, whatever $CDC_TEST_PG_VERSIONS says: TLS and roles do not differ between 15 and 16,
and the pgserver wheel's 16 is built without OpenSSL.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from cdc_replicator.config import load_config
from cdc_replicator.demo.localpg import find_binaries, free_port
from cdc_replicator.errors import AuthenticationFailed, TlsVerificationFailed
from cdc_replicator.model import Column, TableId, TableSchema
from cdc_replicator.source import checks
from cdc_replicator.source.replication import ReplicationConnection
from cdc_replicator.source.snapshot import copy_table_arrow
from tests.support.cli import refusal
from tests.support.cluster import processes
from tests.support.daemon import Daemon, run_cli, wait_converged, write_config
from tests.support.pg import PgDatabase, create_test_database, drop_test_database
from tests.support.tls import Certificates, TlsCluster, make_certificates

TEMPLATE = (
    Path(__file__).resolve().parents[2] / "migrations" / "source" / "templates" / "replication_role.sql"
)
SECRET = "Tr0ub4dor-3-zq9W-secret"  # distinctive: grepped for on every surface
SLOT = "cdc_test"
SOURCE_ERROR = 3


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def secure(certificates: Certificates) -> Iterator[TlsCluster]:
    binaries = find_binaries(15)  # built with OpenSSL; pgserver's 16 is not
    settings = {"log_connections": "on", "lc_messages": "C"}
    with TlsCluster(binaries, certificates, settings=settings) as cluster:
        yield cluster


@pytest.fixture
def db(secure: TlsCluster, request: pytest.FixtureRequest) -> Iterator[PgDatabase]:
    """A fresh database on the TLS cluster; dropped afterwards, with the roles named after it."""
    database = create_test_database(secure, request.node.name)
    yield database
    drop_test_database(database)
    with psycopg.connect(secure.dsn(), autocommit=True) as conn:
        names = conn.execute("select rolname from pg_roles where starts_with(rolname, %s)", (database.name,))
        for (name,) in names.fetchall():
            conn.execute(sql.SQL("drop role {}").format(sql.Identifier(name)))


# ---- helpers ----------------------------------------------------------------------------------


def _harden(db: PgDatabase) -> None:
    """What a careful DBA does first: PUBLIC may neither connect nor use the public schema."""
    db.execute(
        sql.SQL("revoke connect, temporary on database {} from public").format(sql.Identifier(db.name))
    )
    db.execute("revoke all on schema public from public")


def _tables(db: PgDatabase) -> list[str]:
    db.execute("create table t (id int primary key, v text)")
    db.execute("insert into t select g, 'v' || g from generate_series(1, 400) g")
    db.execute("create table u (id bigint primary key, note text, at timestamptz default now())")
    db.execute("insert into u (id, note) select g, 'n' || g from generate_series(1, 150) g")
    db.execute("create table other (id int primary key, secret text)")  # not replicated: no grant
    # the owner publishes the tables beforehand (the role owns none, so it could not)
    db.execute(f"create publication {SLOT} for table t, u with (publish_via_partition_root = true)")
    return ["public.t", "public.u"]


def _run_template(db: PgDatabase, role: str, password: str, tables: list[str]) -> None:
    """The README's command: psql -v role=... -v password=... -v schema=... -v tables=... -f TEMPLATE."""
    psql = db.cluster.binaries.tool("psql")
    argv = [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", f"role={role}", "-v", f"password={password}"]
    argv += ["-v", "schema=public", "-v", "tables=" + ", ".join(tables), "-f", str(TEMPLATE), db.dsn]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def _dsn(db: PgDatabase, role: str, ca: Path, *, host: str = "localhost", extra: str = "") -> str:
    """A key=value DSN that verifies the server's certificate and its host name; no password."""
    return (
        f"host={host} port={db.cluster.port} dbname={db.name} user={role} "
        f"sslmode=verify-full sslrootcert={ca} {extra}"
    ).strip()


def _get(url: str) -> str:
    """The body, also of a 503 (``/readyz`` while not ready)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return str(resp.read().decode())
    except urllib.error.HTTPError as exc:
        return str(exc.read().decode())


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the daemon and its replication reader)."""
    parents: dict[int, int] = {}
    for child, stat in processes("stat"):
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1:
            parents[child] = int(fields[1])
    found, frontier = [pid], [pid]
    while frontier:
        kids = [c for c, p in parents.items() if p in frontier]
        found += kids
        frontier = kids
    return found


def _cmdlines(pid: int) -> dict[int, str]:
    out = {}
    for p in _tree(pid):
        try:
            out[p] = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return out


# ---- TLS and the least-privilege role, end to end --------------------------------------------------


def test_a_least_privilege_role_streams_over_verified_tls_with_every_connection_encrypted(
    db: PgDatabase, certificates: Certificates, tmp_path: Path
) -> None:
    _harden(db)
    tables = _tables(db)
    role = f"{db.name}_cdc"
    _run_template(db, role, SECRET, tables)
    (secret_file := tmp_path / "pgpassword").write_text(SECRET + "\n")
    secret_file.chmod(0o600)
    lake = tmp_path / "lake"
    cfg = write_config(
        tmp_path / "cfg.toml",
        db,
        lake,
        tables,
        slot=SLOT,
        server={},
        source_extra={
            "dsn": _dsn(db, role, certificates.ca),
            "password_file": str(secret_file),
            "heartbeat_interval_seconds": 0.3,
            "slot_check_interval_seconds": 0.3,
        },
        batch={"max_rows": 100},
    )
    log_start = db.cluster.log_path.stat().st_size
    daemon = Daemon(cfg, tmp_path)
    try:
        daemon.start()
        wait_converged(db, lake, tables, daemon=daemon)
        db.execute("update t set v = v || '!' where id % 7 = 0")
        db.execute("delete from u where id > 140")
        db.execute("insert into u (id, note) select g, 'late' from generate_series(1000, 1040) g")
        wait_converged(db, lake, tables, daemon=daemon)
        base = daemon.http_address()

        # every backend of the role uses TLS: the walsender, the side connections
        backends = db.query(
            "select a.backend_type, a.application_name, s.ssl from pg_stat_activity a "
            "join pg_stat_ssl s using (pid) where a.usename = %s",
            (role,),
        )
        assert {b[0] for b in backends} >= {"walsender", "client backend"}, backends
        assert all(ssl for _, _, ssl in backends), backends

        # a live re-sync of t while the daemon streams, with a change to t in its window
        db.execute("update t set v = 'resynced' where id <= 50")
        resync = run_cli(cfg, "snapshot", "--table", "public.t", timeout=120)
        assert resync.returncode == 0, resync.stdout + resync.stderr
        db.execute("insert into t values (5000, 'after the re-sync')")
        wait_converged(db, lake, tables, daemon=daemon)

        status = run_cli(cfg, "status")
        status_json = run_cli(cfg, "status", "--json")
        assert status.returncode == 0 and status_json.returncode == 0, status.stderr + status_json.stderr
        report = json.loads(status_json.stdout)
        assert "streaming" in status.stdout and "active" in status.stdout, status.stdout
        assert "unknown" not in status.stdout, status.stdout

        metrics = _get(base + "/metrics")
        beats = [line for line in metrics.splitlines() if line.startswith("cdc_heartbeats_total ")]
        assert beats and float(beats[0].split()[1]) >= 1, "no heartbeat was written by the role"
        shown = {"metrics": metrics, "readyz": _get(base + "/readyz"), "healthz": _get(base + "/healthz")}
        assert daemon.proc is not None
        titles = _cmdlines(daemon.proc.pid)
        assert len(titles) >= 2 and any(str(cfg) in t for t in titles.values()), titles  # daemon + reader
        shown |= {f"cmdline of {pid}": line for pid, line in titles.items()}
        shown |= {"status": status.stdout + status.stderr, "status --json": json.dumps(report)}
        shown["snapshot --table"] = resync.stdout + resync.stderr
        assert daemon.stop() == 0
    finally:
        daemon.close()
    shown["log"] = daemon.logs[-1].read_text(errors="replace")
    for where, content in shown.items():
        assert SECRET not in content, f"the password leaked into {where}"
    assert "error" not in shown["log"].lower().replace('"errors"', ""), daemon.output(80)

    # the role stayed least-privileged: it owns nothing and may create nothing
    owned = db.query(
        "select count(*) from pg_class c join pg_roles r on r.oid = c.relowner where r.rolname = %s", (role,)
    )
    assert owned == [(0,)]
    attrs = db.query(
        "select rolsuper, rolcreatedb, rolcreaterole, rolbypassrls, has_database_privilege(rolname, "
        "current_database(), 'create'), has_schema_privilege(rolname, 'public', 'create'), "
        "has_table_privilege(rolname, 'other', 'select') from pg_roles where rolname = %s",
        (role,),
    )
    assert attrs == [(False, False, False, False, False, False, False)]

    # every connection the daemon, its reader, the snapshot workers (ADBC) and the CLI made: TLS
    server_log = db.cluster.log_path.read_bytes()[log_start:].decode(errors="replace")
    authorized = [line for line in server_log.splitlines() if f"authorized: user={role} " in line]
    assert authorized, server_log[-2000:]
    assert all("SSL enabled" in line for line in authorized), "\n".join(authorized)
    assert any("replication connection authorized" in line for line in authorized)
    assert any("application_name=cdc-replicator snapshot" in line for line in authorized), "no ADBC copy"


# ---- TLS failures: a clear error and exit 3, never retried; a server that is down still is ----------


@pytest.mark.parametrize(
    "case",
    ["another CA", "another CA in PGSSLROOTCERT", "a host name the certificate does not name", "no CA file"],
)
def test_a_certificate_that_fails_verification_stops_with_exit_3_and_the_fix(
    db: PgDatabase, certificates: Certificates, tmp_path: Path, case: str
) -> None:
    tables = _tables(db)
    env: dict[str, str] = {}
    if case == "another CA in PGSSLROOTCERT":  # libpq's defaults from the environment count too
        dsn = f"host=localhost port={db.cluster.port} dbname={db.name} user=postgres"
        env = {"PGSSLMODE": "verify-full", "PGSSLROOTCERT": str(certificates.other_ca)}
        wanted = ("tls verification", "sslrootcert")
    elif case == "another CA":
        dsn = _dsn(db, "postgres", certificates.other_ca)
        wanted = ("tls verification", "sslrootcert")
    elif case == "no CA file":
        dsn = _dsn(db, "postgres", tmp_path / "missing.crt")
        wanted = ("tls verification", "missing.crt")
    else:  # the server's certificate names localhost and 127.0.0.1; hostaddr reaches it anyway
        dsn = _dsn(db, "postgres", certificates.ca, host="db.example.com", extra="hostaddr=127.0.0.1")
        wanted = ("tls verification", "db.example.com", "host name")
    cfg = write_config(
        tmp_path / "cfg.toml", db, tmp_path / "lake", tables, slot=SLOT, source_extra={"dsn": dsn}
    )
    result = run_cli(cfg, "run", env=env, timeout=60)
    message = refusal(result, SOURCE_ERROR)
    assert "retrying in" not in result.stderr, result.stderr
    assert all(w in message for w in wanted), message


def test_an_unreachable_server_under_verify_full_is_still_retried(
    db: PgDatabase, certificates: Certificates, tmp_path: Path
) -> None:
    tables = _tables(db)
    nothing_listens = free_port()
    dsn = f"host=localhost port={nothing_listens} dbname={db.name} user=postgres sslmode=verify-full sslrootcert={certificates.ca}"
    cfg = write_config(
        tmp_path / "cfg.toml",
        db,
        tmp_path / "lake",
        tables,
        slot=SLOT,
        source_extra={"dsn": dsn, "retry_give_up_seconds": 2.0, "retry_max_seconds": 0.5},
    )
    result = run_cli(cfg, "run", timeout=60)
    assert result.returncode == SOURCE_ERROR, result.stderr
    assert "retrying in" in result.stderr and "tls verification" not in result.stderr.lower(), result.stderr


def test_a_server_without_tls_under_sslmode_require_stops_with_exit_3(pg: PgDatabase, tmp_path: Path) -> None:
    pg.execute("create table t (id int primary key)")
    dsn = f"host=127.0.0.1 port={pg.cluster.port} dbname={pg.name} user=postgres sslmode=require"
    cfg = write_config(tmp_path / "cfg.toml", pg, tmp_path / "lake", ["public.t"], source_extra={"dsn": dsn})
    result = run_cli(cfg, "run", timeout=60)
    message = refusal(result, SOURCE_ERROR)
    assert "retrying in" not in result.stderr and "without tls" in message and "ssl = on" in message


def test_the_arrow_copy_verifies_the_certificate_too(db: PgDatabase, certificates: Certificates) -> None:
    """The snapshot workers' ADBC driver gets the DSN's TLS keys: it reads with the CA, refuses another."""
    _tables(db)
    schema = TableSchema(
        table=TableId("public", "t"),
        columns=(Column("id", 23, is_key=True), Column("v", 25)),
    )
    good = _dsn(db, "postgres", certificates.ca)
    rows = pa.Table.from_batches(list(copy_table_arrow(good, schema, snapshot=None)))
    assert rows.num_rows == 400
    with pytest.raises(TlsVerificationFailed) as refused:
        list(copy_table_arrow(_dsn(db, "postgres", certificates.other_ca), schema, snapshot=None))
    assert not refused.value.retryable and "sslrootcert" in str(refused.value)


# ---- secrets: from wherever they come, they never show ----------------------------------------------

WRONG = "Wr0ng-pa55-xK7q-secret"
SOURCES = [
    "dsn in the config file",
    "CDC_REPLICATOR_SOURCE__DSN",
    "PGPASSWORD",
    "PGPASSFILE",
    "source.password_file",
]


def _secret_source(
    source: str, db: PgDatabase, dsn: str, password: str, tmp_path: Path
) -> tuple[dict[str, object], dict[str, str]]:
    """(source keys for the config, environment) that hand ``password`` to the daemon from ``source``."""
    if source == "dsn in the config file":
        return {"dsn": f"{dsn} password={password}"}, {}
    if source == "CDC_REPLICATOR_SOURCE__DSN":
        return {}, {"CDC_REPLICATOR_SOURCE__DSN": f"{dsn} password={password}"}
    if source == "PGPASSWORD":
        return {}, {"PGPASSWORD": password}
    path = tmp_path / f"secret-{password[:5]}"
    if source == "PGPASSFILE":
        path.write_text(f"*:{db.cluster.port}:{db.name}:*:{password}\n")
        path.chmod(0o600)  # libpq ignores a pgpass file others may read
        return {}, {"PGPASSFILE": str(path)}
    path.write_text(password + "\n")
    return {"password_file": str(path)}, {}


def test_a_wrong_password_from_any_source_is_one_clear_error_that_shows_no_password(
    db: PgDatabase, certificates: Certificates, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command line once (its error and status), then each source in-process, on both connection kinds."""
    tables = _tables(db)
    role = f"{db.name}_cdc"
    _run_template(db, role, SECRET, tables)
    dsn = _dsn(db, role, certificates.ca)
    keys, _ = _secret_source("dsn in the config file", db, dsn, WRONG, tmp_path)
    cfg = write_config(tmp_path / "bad.toml", db, tmp_path / "lake", tables, slot=SLOT, source_extra=keys)
    refused = run_cli(cfg, "run", timeout=60)
    message = refusal(refused, SOURCE_ERROR)
    assert "password authentication failed" in message and "retrying in" not in refused.stderr, message
    assert WRONG not in refused.stdout + refused.stderr, "the password leaked into the error"
    unknown = run_cli(cfg, "status", "--json")
    assert '"unknown"' in unknown.stdout and "password authentication failed" in unknown.stdout
    assert WRONG not in unknown.stdout + unknown.stderr, "the password leaked into status"

    for source in SOURCES:
        keys, env = _secret_source(source, db, dsn, WRONG, tmp_path)
        cfg = write_config(
            tmp_path / "bad.toml", db, tmp_path / "lake", tables, slot=SLOT, source_extra={"dsn": dsn, **keys}
        )
        with monkeypatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            loaded = load_config(cfg, env={k: v for k, v in env.items() if k.startswith("CDC_")})
            for connect in (checks.connect, ReplicationConnection):
                with pytest.raises(AuthenticationFailed) as failed:
                    connect(loaded.source.dsn).close()
                shown = f"{failed.value}"
                assert "password authentication failed" in shown and not failed.value.retryable, shown
                assert WRONG not in shown, f"the password from {source} leaked into an error"


# the dsn in the config file: tests/integration/test_service.py; source.password_file: the first test here
@pytest.mark.parametrize("source", ["CDC_REPLICATOR_SOURCE__DSN", "PGPASSWORD", "PGPASSFILE"])
def test_a_password_from_the_environment_or_a_pgpass_file_works_and_never_shows(
    db: PgDatabase, certificates: Certificates, tmp_path: Path, source: str
) -> None:
    tables = _tables(db)
    role = f"{db.name}_cdc"
    _run_template(db, role, SECRET, tables)
    dsn = _dsn(db, role, certificates.ca)
    lake = tmp_path / "lake"
    shown: dict[str, str] = {}
    keys, env = _secret_source(source, db, dsn, SECRET, tmp_path)
    cfg = write_config(
        tmp_path / "cfg.toml", db, lake, tables, slot=SLOT, server={}, source_extra={"dsn": dsn, **keys}
    )
    daemon = Daemon(cfg, tmp_path)
    try:
        daemon.start(env=env)
        wait_converged(db, lake, tables, daemon=daemon)
        base = daemon.http_address()
        shown |= {"metrics": _get(base + "/metrics"), "readyz": _get(base + "/readyz")}
        assert daemon.proc is not None
        titles = _cmdlines(daemon.proc.pid)
        assert len(titles) >= 2 and any(str(cfg) in t for t in titles.values()), titles  # daemon + reader
        shown |= {f"cmdline of {pid}": line for pid, line in titles.items()}
        for args in (("status",), ("status", "--json")):
            done = run_cli(cfg, *args, env=env)
            assert done.returncode == 0 and '"unknown"' not in done.stdout, done.stdout + done.stderr
            shown[" ".join(args)] = done.stdout + done.stderr
        assert daemon.stop() == 0
    finally:
        daemon.close()
    shown["log"] = daemon.logs[-1].read_text(errors="replace")
    for where, content in shown.items():
        assert SECRET not in content, f"the password from {source} leaked into {where}"
