"""Tell the lake's storage failures apart by OS error number: a full disk is waited out, others are not.

delta-rs raises ``DeltaError`` (or a bare ``OSError`` without ``errno``) for a failed local write:
the error number survives only in the text of the Rust ``std::io::Error`` it wraps, which always
ends in ``(os error N)`` (Rust formats it so, whatever the locale). That suffix is all that is read
— never the words before it — and only when no ``OSError.errno`` is set on the exception or its
causes. ``errors.from_os_errno`` decides what a number means.
"""

from __future__ import annotations

import re

from cdc_replicator.errors import SinkError, from_os_errno

__all__ = ["os_errno", "storage_error"]

_RUST_OS_ERROR = re.compile(r"\(os error (\d{1,4})\)")


def os_errno(exc: BaseException) -> int | None:
    """The OS error number behind ``exc``: an ``OSError.errno`` in its chain, else delta-rs's ``(os error N)``."""
    seen: set[int] = set()
    chain: BaseException | None = exc
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        if isinstance(chain, OSError) and chain.errno is not None:
            return int(chain.errno)
        found = _RUST_OS_ERROR.search(str(chain))
        if found:
            return int(found.group(1))
        chain = chain.__cause__ or chain.__context__
    return None


def storage_error(exc: BaseException, *, context: str, path: str) -> SinkError | None:
    """The error for ``exc`` when its errno has a rule (a full disk: retried; no permission: fatal), else None.

    ``context`` says what failed (e.g. "merge into public.t up to 0/16B37A0"), ``path`` where.
    """
    return from_os_errno(os_errno(exc), context=context, path=path)
