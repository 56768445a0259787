"""Build harness/fastlisten.pyx at run time, so the load generator can use the Cython listener
without it being part of the installed `wsd` package.

The extension is compiled in a temporary directory (generated C, objects and all; nothing of the
repository's own build is touched) and moved next to its source as `harness/fastlisten.<abi>.so`.
It is rebuilt when the .pyx is newer; a lock on the .pyx keeps two processes that start at once
from compiling over each other.
"""

from __future__ import annotations

import fcntl
import importlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "fastlisten.pyx"
BUILT = SOURCE.with_name("fastlisten" + sysconfig.get_config_var("EXT_SUFFIX"))

# Run in a fresh interpreter inside the temporary directory, so setuptools sees no pyproject.toml.
BUILD_SCRIPT = """
import sys
from Cython.Build import cythonize
from setuptools import Extension, setup

source, build = sys.argv[1], sys.argv[2]
setup(
    name="harness-fastlisten",
    script_args=["--quiet", "build_ext", "--build-lib", build, "--build-temp", build],
    ext_modules=cythonize(
        [Extension("harness.fastlisten", [source], extra_compile_args=["-O2"])],
        build_dir=build, language_level=3, quiet=True,
    ),
)
"""


def _up_to_date() -> bool:
    return BUILT.exists() and BUILT.stat().st_mtime >= SOURCE.stat().st_mtime


def _build() -> str | None:
    """Compile the extension into place; None, or why it failed."""
    with tempfile.TemporaryDirectory(prefix="wsd-fastlisten-") as build:
        result = subprocess.run(
            [sys.executable, "-c", BUILD_SCRIPT, str(SOURCE), build],
            cwd=build, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        built = Path(build) / "harness" / BUILT.name
        if result.returncode != 0 or not built.exists():
            return f"exit {result.returncode}: {(result.stdout + result.stderr)[-2000:]}"
        # Into place in one step: a process importing it meanwhile sees the old file or the new one.
        temporary = BUILT.with_name(f".{BUILT.name}.{os.getpid()}")
        shutil.copy2(built, temporary)
        os.replace(temporary, BUILT)
    return None


def build_fast_listener() -> bool:
    """Make `harness.fastlisten` importable; False (with the reason on stderr) if it cannot be built here."""
    if not _up_to_date():
        with open(SOURCE, "rb") as source:
            fcntl.flock(source, fcntl.LOCK_EX)
            if not _up_to_date():  # another process may have built it while this one waited
                failure = _build()
                if failure:
                    print(f"{SOURCE} did not build; using the Python listener: {failure}", file=sys.stderr)
                    return False
        importlib.invalidate_caches()
    try:
        import harness.fastlisten  # noqa: F401
    except ImportError as exc:
        print(f"harness.fastlisten did not import ({exc}); using the Python listener", file=sys.stderr)
        return False
    return True
