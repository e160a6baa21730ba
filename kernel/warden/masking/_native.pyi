"""Type stub of the C extension warden.masking._native (source: _native.c)."""

from typing_extensions import Buffer

def hmac_sha256_hex(
    key: Buffer,
    offsets: Buffer,
    data: Buffer | None,
    validity: Buffer | None,
    offset: int,
    length: int,
    offset_width: int,
    /,
    *,
    portable: bool = False,
    threads: int = 0,
) -> tuple[bytes, bytes]:
    """HMAC-SHA256 hex of every non-null value: the offsets (int32) and data buffers of an
    Arrow string array, 64 bytes per non-null row, empty for a null one."""

def email_mask(
    offsets: Buffer,
    data: Buffer | None,
    validity: Buffer | None,
    offset: int,
    length: int,
    offset_width: int,
    /,
) -> tuple[bytes, bytes]:
    """The email operator over one (large_)string array: the offsets (in the input's width)
    and data buffers of the result."""

def sha_ni_available() -> bool:
    """Whether hmac_sha256_hex uses the CPU's SHA instructions (unless portable=True)."""
