"""``warden install``: write the warden kernelspec, the way ``ipykernel install`` does.

    warden install [--user | --sys-prefix | --prefix P] [--name N] [--display-name D]
                   [--env KEY=VALUE ...]

The kernelspec runs ``sys.executable -m warden.kernel -f {connection_file}``, declares
``metadata.debugger: false`` and signal interrupts (an interrupt cancels the running
query at the gateway). ``--env`` bakes settings such as ``WARDEN_GATEWAY_URL`` into the
spec (never a token or a password: those are refused).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

KERNEL_NAME = "warden"
DISPLAY_NAME = "Python 3 (warden)"
_SECRET_KEYS = ("WARDEN_TOKEN", "WARDEN_CLIENT_SECRET")


def kernel_dict(*, display_name: str = DISPLAY_NAME, env: Mapping[str, str] | None = None, executable: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "argv": [executable or sys.executable, "-m", "warden.kernel", "-f", "{connection_file}"],
        "display_name": display_name,
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {"debugger": False, "supported_encryption": ["curve"], "warden": True},
        "kernel_protocol_version": "5.5",
    }
    if env:
        spec["env"] = dict(env)
    return spec


#: warden's own logo (logo-svg.svg, logo-32x32.png, logo-64x64.png): the launcher and the
#: kernel picker tell the warden kernel from plain Python at a glance.
RESOURCES = Path(__file__).with_name("resources")


def write_kernelspec(path: Path, **kwargs: Any) -> Path:
    """Write kernel.json and the warden logos into the directory ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    for item in RESOURCES.iterdir():
        if item.is_file() and item.name.startswith("logo-"):
            shutil.copy(item, path / item.name)
    (path / "kernel.json").write_text(json.dumps(kernel_dict(**kwargs), indent=1) + "\n", encoding="utf-8")
    return path


def install_kernelspec(
    *,
    user: bool = False,
    sys_prefix: bool = False,
    prefix: str | None = None,
    name: str = KERNEL_NAME,
    display_name: str | None = None,
    env: Mapping[str, str] | None = None,
    executable: str | None = None,
) -> str:
    """Install the warden kernelspec; returns the directory it was installed to.

    Where: ``user`` (the user's Jupyter data dir), ``sys_prefix`` (this environment),
    ``prefix`` (``PREFIX/share/jupyter/kernels``), or else system-wide — as
    ``ipykernel install`` does it.
    """
    from jupyter_client.kernelspec import KernelSpecManager

    if sum(bool(x) for x in (user, sys_prefix, prefix)) > 1:
        raise ValueError("choose at most one of user, sys_prefix and prefix")
    for key in env or {}:
        if key in _SECRET_KEYS:
            raise ValueError(f"{key} is a credential: it does not belong in a kernelspec (set it in the kernel's environment instead)")
    if sys_prefix:
        prefix = sys.prefix
    if display_name is None:
        display_name = DISPLAY_NAME if name == KERNEL_NAME else name
    with tempfile.TemporaryDirectory(prefix="warden-kernelspec-") as tmp:
        staged = write_kernelspec(Path(tmp) / name, display_name=display_name, env=env, executable=executable)
        dest: str = KernelSpecManager().install_kernel_spec(str(staged), kernel_name=name, user=user, prefix=prefix)
    return dest


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``install`` to the ``warden`` command's subparsers."""
    p: argparse.ArgumentParser = subparsers.add_parser("install", help="install the warden Jupyter kernel (kernelspec)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for the current user")
    where.add_argument("--sys-prefix", action="store_true", help=f"install into this environment ({sys.prefix})")
    where.add_argument("--prefix", help="install into PREFIX/share/jupyter/kernels")
    p.add_argument("--name", default=KERNEL_NAME, help=f"kernelspec name (default {KERNEL_NAME})")
    p.add_argument("--display-name", help=f"name shown in the launcher (default {DISPLAY_NAME!r})")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment for the kernel, e.g. WARDEN_GATEWAY_URL=http://gateway:8787 (repeatable)")  # fmt: skip
    p.set_defaults(func=_install)
    return p


def _install(args: argparse.Namespace) -> int:
    from warden.errors import WardenError

    env: dict[str, str] = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise WardenError(f"--env {item!r} must be KEY=VALUE")
        env[key] = value
    try:
        dest = install_kernelspec(user=args.user, sys_prefix=args.sys_prefix, prefix=args.prefix, name=args.name,
                                  display_name=args.display_name, env=env)  # fmt: skip
    except (ValueError, OSError) as exc:
        raise WardenError(str(exc)) from None
    print(f"Installed kernelspec {args.name} in {dest}")
    return 0
