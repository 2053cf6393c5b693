"""Specification of the libpq network options added to every source connection string."""

from __future__ import annotations

from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from cdc_replicator.source.netguard import network_conninfo, network_params


def test_keepalives_and_the_connect_timeout_are_added_to_a_dsn_that_has_none() -> None:
    params = network_params("postgresql://u@db.example:5432/app", connect_timeout=7.5, silence_timeout=4.0)
    assert params["connect_timeout"] == "7"
    assert params["keepalives"] == "1"
    assert {"keepalives_idle", "keepalives_interval", "keepalives_count"} <= params.keys()
    if pq.version() >= 120000:
        assert params["tcp_user_timeout"] == "4000"


def test_values_the_user_wrote_in_the_dsn_are_never_overridden() -> None:
    dsn = "host=db port=5432 dbname=app connect_timeout=30 keepalives_idle=120 tcp_user_timeout=9000"
    out = conninfo_to_dict(network_conninfo(dsn, connect_timeout=2, silence_timeout=4, application_name="x"))
    assert out["connect_timeout"] == "30"
    assert out["keepalives_idle"] == "120"
    assert out["tcp_user_timeout"] == "9000"
    assert out["keepalives"] == "1" and out["application_name"] == "x"


def test_keepalives_switched_off_in_the_dsn_stay_off() -> None:
    out = conninfo_to_dict(network_conninfo("dbname=app keepalives=0", connect_timeout=10))
    assert out["keepalives"] == "0"
