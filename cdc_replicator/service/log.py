"""Logging setup: readable lines on a terminal, JSON lines elsewhere; passwords never reach a log."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

__all__ = ["current_logging", "setup_logging"]

_URL_PASSWORD = re.compile(r"(\w+://[^:/@\s]+:)[^@\s]+@")
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE)


def _redact(text: str) -> str:
    """Mask passwords in URL-form and key=value DSNs anywhere in a log message."""
    return _KV_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", text))


class _RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        red = _redact(msg)
        if red != msg:
            record.msg, record.args = red, None
        return True


# ``key=value`` pairs in a message (``table=public.orders lsn=0/16B3748 batch=12``) also become
# top-level JSON fields, so a log pipeline can filter on them without parsing the text
_FIELD = re.compile(r"(?<![\w.])([a-z][a-z0-9_]*)=([^\s,;]+)")
_RESERVED = frozenset({"ts", "level", "logger", "msg", "exc"})


def _fields(msg: str) -> dict[str, object]:
    out: dict[str, object] = {}
    head = msg.split(" dsn=", 1)[0]  # a DSN's own key=value pairs are not fields of the event
    for key, raw in _FIELD.findall(head):
        if key in _RESERVED or key in out:
            continue
        out[key] = int(raw) if raw.isdigit() and len(raw) < 19 else raw
    return out


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        out: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": msg,
        }
        out.update(_fields(msg))
        if record.exc_info:
            out["exc"] = _redact(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False)


def setup_logging(level: str = "info", fmt: str = "auto") -> None:
    """Configure the root logger once: ``fmt`` is auto (text on a terminal, else JSON), text or json."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RedactingFilter())
    if use_json:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("deltalake", "urllib3", "botocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def current_logging() -> tuple[str, str]:
    """(level, format) of the root logger as ``setup_logging`` left it, to set up a child process alike."""
    root = logging.getLogger()
    level = logging.getLevelName(root.level).lower()
    json_ = any(isinstance(h.formatter, _JsonFormatter) for h in root.handlers)
    return level, "json" if json_ else "text"
