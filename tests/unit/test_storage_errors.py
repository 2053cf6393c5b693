"""Specification of how the lake's storage failures are classified: by OS error number, never by words."""

from __future__ import annotations

import errno

import pytest
from deltalake.exceptions import DeltaError

from cdc_replicator.errors import STORAGE_ERRNO_RULES, SinkError, StorageFull, from_os_errno
from cdc_replicator.service.health import HealthState, Phase
from cdc_replicator.sink.storage import os_errno, storage_error

# what delta-rs 1.6.6 raised here for a merge and for an empty append on a full tmpfs
MERGE_ON_FULL_DISK = (
    "Failed to parse parquet: External: Generic LocalFileSystem error: Unable to copy data to file: "
    "No space left on device (os error 28)"
)
APPEND_ON_FULL_DISK = (
    "Generic LocalFileSystem error\n          \x1b[31m↳\x1b[0m Unable to copy data to file\n"
    "           \x1b[31m↳\x1b[0m No space left on device (os error 28)\n"
)


def test_the_errno_comes_from_an_oserror_or_from_the_rust_os_error_suffix_delta_rs_leaves() -> None:
    assert os_errno(OSError(errno.EDQUOT, "Disk quota exceeded")) == errno.EDQUOT
    assert os_errno(DeltaError(MERGE_ON_FULL_DISK)) == errno.ENOSPC
    assert os_errno(OSError(APPEND_ON_FULL_DISK)) == errno.ENOSPC  # an OSError without errno
    wrapped = RuntimeError("wrapped")
    wrapped.__cause__ = DeltaError("Kein Speicherplatz mehr verfügbar (os error 28)")
    assert os_errno(wrapped) == errno.ENOSPC  # through the cause chain, whatever the words


def test_words_alone_are_never_read_as_an_errno() -> None:
    assert os_errno(DeltaError("No space left on device")) is None
    assert os_errno(DeltaError("Generic error: disk full")) is None
    assert os_errno(DeltaError("Transaction failed: version 3 already exists")) is None


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_or_quota_is_a_retryable_storage_full_naming_the_errno_the_path_and_the_fix(
    code: int,
) -> None:
    err = from_os_errno(code, context="merge into public.t up to 0/1 failed", path="/lake/public/t")
    assert isinstance(err, StorageFull) and err.retryable and err.exit_code == 7
    assert errno.errorcode[code] in err.message and "/lake/public/t" in err.message
    assert "free space" in err.hint and "/lake/public/t" in err.hint


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM, errno.EROFS])
def test_permission_and_read_only_errors_stop_with_their_fix(code: int) -> None:
    err = from_os_errno(code, context="writing a chunk of public.t failed", path="/lake/public/t")
    assert type(err) is SinkError and not err.retryable and err.exit_code == 7
    assert errno.errorcode[code] in err.message and "/lake/public/t" in err.hint


def test_any_other_error_keeps_the_callers_policy() -> None:
    assert from_os_errno(errno.EIO, context="x", path="/lake") is None
    assert from_os_errno(None, context="x", path="/lake") is None
    assert storage_error(DeltaError("Schema error: no field named x"), context="x", path="/lake") is None
    assert isinstance(storage_error(DeltaError(MERGE_ON_FULL_DISK), context="x", path="/lake"), StorageFull)
    assert len({r.errno for r in STORAGE_ERRNO_RULES}) == len(STORAGE_ERRNO_RULES)


def test_readiness_says_what_a_retry_waits_for() -> None:
    h = HealthState(())
    h.set_phase(Phase.RETRYING, error="merge failed: ENOSPC", waiting_for="lake storage full, retrying")
    assert h.readiness().body["reasons"] == ["lake storage full, retrying: merge failed: ENOSPC"]
    h.set_phase(Phase.STREAMING)
    h.set_phase(Phase.RETRYING, error="connection lost")
    assert h.readiness().body["reasons"] == ["source unavailable, retrying: connection lost"]
