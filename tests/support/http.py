"""Read the daemon's HTTP endpoint as an orchestrator would: status code and JSON body."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

__all__ = ["get", "get_json"]


def get(url: str) -> tuple[int, str]:
    """The status and body of ``GET url`` (an HTTP error status is an answer, not an exception)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    code, body = get(url)
    data: dict[str, Any] = json.loads(body)
    return code, data
