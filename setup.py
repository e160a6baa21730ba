"""warden's optional C extensions (everything else is in pyproject.toml).

- warden.masking._native: the hot mask kernels.
- warden.gateway._pgcopy: PostgreSQL's binary COPY decoded into Arrow buffers (needs
  libpq's headers: Debian's libpq-dev).

optional=True: without a C compiler (or libpq's headers) the install still succeeds;
warden.masking uses its pure-Python/Arrow paths and the gateway reads every PostgreSQL
result through ADBC (scripts/bootstrap.sh warns when a module is missing).
"""

import subprocess
import sys

from setuptools import Extension, setup


def libpq_include() -> list[str]:
    try:
        out = subprocess.run(["pg_config", "--includedir"], capture_output=True, text=True, check=True, timeout=30)
        return [out.stdout.strip()]
    except (OSError, subprocess.SubprocessError):
        return ["/usr/include/postgresql"]


unix = sys.platform != "win32"
setup(
    ext_modules=[
        Extension(
            "warden.masking._native",
            ["kernel/warden/masking/_native.c"],
            extra_compile_args=["-O3", "-std=c11"] if unix else [],
            libraries=[] if sys.platform in ("win32", "darwin") else ["pthread"],
            optional=True,
        ),
        Extension(
            "warden.gateway._pgcopy",
            ["kernel/warden/gateway/_pgcopy.c"],
            include_dirs=libpq_include(),
            extra_compile_args=["-O2", "-std=c11", "-Wall"] if unix else [],
            libraries=["pq"] + (["pthread"] if sys.platform not in ("win32", "darwin") else []),
            optional=True,
        ),
    ],
)
