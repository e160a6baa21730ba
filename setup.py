"""The optional C extension warden.masking._native (everything else is in pyproject.toml).

optional=True: without a C compiler the install still succeeds and warden.masking uses its
pure-Python/Arrow paths (scripts/bootstrap.sh warns when the module is missing).
"""

import sys

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "warden.masking._native",
            ["kernel/warden/masking/_native.c"],
            extra_compile_args=[] if sys.platform == "win32" else ["-O3", "-std=c11"],
            libraries=[] if sys.platform in ("win32", "darwin") else ["pthread"],
            optional=True,
        )
    ],
)
