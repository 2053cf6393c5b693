"""Test-only TLS: a throwaway CA made with ``openssl``, and a cluster that accepts only TLS connections.

``make_certificates(directory)`` writes a test CA, a server certificate it signs for
``localhost`` and ``127.0.0.1`` (CN and SAN), and a second, unrelated CA (a client that trusts only
it must refuse the server). ``TlsCluster`` is a ``Cluster`` started with ``ssl = on`` and that
server certificate, whose pg_hba.conf has ``hostssl`` lines only: a plain TCP connection is refused,
so everything that connects over TCP uses TLS. ``postgres`` is trusted (the fixtures' admin); every
other role must give its password (scram-sha-256). The unix socket trusts everyone, as in ``Cluster``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cdc_replicator.demo.localpg import HOST, PgBinaries
from tests.support.cluster import Cluster

__all__ = ["Certificates", "TlsCluster", "make_certificates"]

_DAYS = "2"


@dataclass(frozen=True, slots=True)
class Certificates:
    """The files ``make_certificates`` wrote (PEM)."""

    ca: Path  # the CA that signed the server certificate
    other_ca: Path  # a CA that signed nothing the server holds
    server_cert: Path
    server_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    assert openssl, "openssl is missing: apt-get install openssl"
    subprocess.run([openssl, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key.name, "-out", cert.name,
             "-days", _DAYS, "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)  # fmt: skip
    return key, cert


def make_certificates(directory: Path) -> Certificates:
    """A CA, a server certificate it signs (CN and SAN localhost, SAN IP 127.0.0.1), another CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca(directory, "test-ca")
    _, other_cert = _ca(directory, "other-ca")
    (directory / "server.ext").write_text(
        f"subjectAltName = DNS:localhost, IP:{HOST}\nextendedKeyUsage = serverAuth\n"
        "basicConstraints = CA:FALSE\n"
    )
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=localhost", cwd=directory)  # fmt: skip
    _openssl("x509", "-req", "-in", "server.csr", "-CA", ca_cert.name, "-CAkey", ca_key.name,
             "-CAcreateserial", "-out", "server.crt", "-days", _DAYS, "-extfile", "server.ext",
             cwd=directory)  # fmt: skip
    return Certificates(ca_cert, other_cert, directory / "server.crt", directory / "server.key")


class TlsCluster(Cluster):
    """A cluster that speaks TLS with ``certificates``' server certificate and refuses plain TCP."""

    def __init__(
        self,
        binaries: PgBinaries,
        certificates: Certificates,
        *,
        settings: Mapping[str, str] | None = None,
        fast: bool = True,
    ) -> None:
        # relative paths are read from the data directory, where _create_datadir copies the files
        tls = {"ssl": "on", "ssl_cert_file": "server.crt", "ssl_key_file": "server.key"}
        super().__init__(binaries, settings={**tls, **(settings or {})}, fast=fast)
        self._certificates = certificates

    @property
    def certificates(self) -> Certificates:
        return self._certificates

    def _create_datadir(self) -> None:
        super()._create_datadir()
        for source, name in (
            (self._certificates.server_cert, "server.crt"),
            (self._certificates.server_key, "server.key"),
        ):
            target = self.datadir / name
            shutil.copyfile(source, target)
            target.chmod(0o600)  # the server refuses a key others can read
            self._chown(target)

    def _write_config(self) -> None:
        super()._write_config()
        hba = [
            "# TYPE   DATABASE     USER      ADDRESS        METHOD   (TLS only over TCP)",
            "local    all          all                      trust",
            "local    replication  all                      trust",
            f"hostssl  all          postgres  {HOST}/32   trust",
            f"hostssl  replication  postgres  {HOST}/32   trust",
            f"hostssl  all          all       {HOST}/32   scram-sha-256",
            f"hostssl  replication  all       {HOST}/32   scram-sha-256",
        ]
        self._write_owned(self.datadir / "pg_hba.conf", "\n".join(hba) + "\n")
