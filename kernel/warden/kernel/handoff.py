"""Credentials out of the kernel's environment block.

``os.environ.pop`` only changes Python's copy: the environment the process was started
with stays readable in ``/proc/<pid>/environ`` (by the analyst's code, and by any
process of the same user). So ``python -m warden.kernel`` starts like this:

1. If ``WARDEN_TOKEN`` or ``WARDEN_CLIENT_SECRET`` is in the environment, they are
   written to an anonymous in-memory file (``memfd``; a pipe where there is none) and
   the process re-executes itself (same pid, same argv) with an environment that lacks
   them and names that file descriptor in ``WARDEN_SECRETS_FD``.
2. The new image reads the descriptor, closes it and drops ``WARDEN_SECRETS_FD``
   before ipykernel (or any analyst code) starts.

Afterwards the secrets are in no environment block and no open file descriptor; they
live only in this process's memory (see docs/kernel.md for what that means).
Imports only the standard library: it runs before ipykernel is loaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Mapping, MutableMapping

SECRET_ENV = ("WARDEN_TOKEN", "WARDEN_CLIENT_SECRET")
FD_ENV = "WARDEN_SECRETS_FD"

_delivered: dict[str, str] = {}


def delivered() -> Mapping[str, str]:
    """Secrets handed over through the descriptor (empty if none were)."""
    return _delivered


def _secret_file(data: bytes) -> int:
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None:
        fd: int = memfd("warden-secrets", 0)  # inheritable across exec (no MFD_CLOEXEC)
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
        return fd
    r, w = os.pipe()  # pragma: no cover - Linux has memfd_create
    try:
        if len(data) > 60_000:
            raise OSError("credentials too large to hand over through a pipe")
        os.write(w, data)
    finally:
        os.close(w)
    os.set_inheritable(r, True)
    return r


def reexec_without_secrets(env: MutableMapping[str, str] | None = None, argv: list[str] | None = None) -> None:
    """Re-execute this interpreter without the secrets in its environment (does not
    return when there are secrets to hide)."""
    env = os.environ if env is None else env
    found = {k: env[k] for k in SECRET_ENV if env.get(k)}
    if not found:
        return
    fd = _secret_file(json.dumps(found).encode())
    clean = {k: v for k, v in env.items() if k not in SECRET_ENV}
    clean[FD_ENV] = str(fd)
    sys.stdout.flush()
    sys.stderr.flush()
    args = argv if argv is not None else list(sys.orig_argv)
    os.execve(sys.executable, args, clean)


def receive_secrets(env: MutableMapping[str, str] | None = None) -> None:
    """Read and close the descriptor named by ``WARDEN_SECRETS_FD`` (if any)."""
    env = os.environ if env is None else env
    value = env.pop(FD_ENV, None)
    if not value:
        return
    try:
        fd = int(value)
    except ValueError:
        return
    chunks = []
    try:
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError:
        return
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    try:
        data = json.loads(b"".join(chunks) or b"{}")
    except ValueError:
        return
    if isinstance(data, dict):
        _delivered.update({str(k): str(v) for k, v in data.items() if k in SECRET_ENV and isinstance(v, str)})


def isolate_secrets() -> None:
    """Step 1 or step 2 above, whichever applies to this process."""
    if os.environ.get(FD_ENV):
        receive_secrets()
        for key in SECRET_ENV:  # set again after the hand-over? never keep them
            os.environ.pop(key, None)
        return
    reexec_without_secrets()
