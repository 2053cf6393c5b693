"""Specification of the log format: one JSON object per line, key=value pairs as fields, no password."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from cdc_replicator.service import log


@pytest.fixture
def json_lines(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    out = io.StringIO()
    monkeypatch.setattr(log.sys, "stderr", out)
    log.setup_logging("debug", "json")
    yield out
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_each_event_is_one_json_line_with_its_key_value_pairs_as_fields(json_lines: io.StringIO) -> None:
    logging.getLogger("cdc_replicator.engine.pipeline").info(
        "batch applied batch=%d end=%s table=%s seconds=%.3f", 12, "0/16B3748", "public.orders", 0.25
    )
    (line,) = json_lines.getvalue().splitlines()
    event = json.loads(line)
    assert event["level"] == "info" and event["logger"] == "cdc_replicator.engine.pipeline"
    assert event["msg"] == "batch applied batch=12 end=0/16B3748 table=public.orders seconds=0.250"
    assert (event["batch"], event["end"], event["table"], event["seconds"]) == (
        12,
        "0/16B3748",
        "public.orders",
        "0.250",
    )


def test_passwords_are_masked_and_a_dsn_does_not_become_fields(json_lines: io.StringIO) -> None:
    logger = logging.getLogger("cdc_replicator.test")
    logger.info("streaming slot=s dsn=host=db user=app password=Sup3r dbname=shop")
    logger.warning("cannot connect to postgresql://app:Sup3r@db:5432/shop")
    text = json_lines.getvalue()
    assert "Sup3r" not in text
    first, second = (json.loads(x) for x in text.splitlines())
    assert first["slot"] == "s" and "password" not in first and "user" not in first
    assert "postgresql://app:***@db:5432/shop" in second["msg"]
