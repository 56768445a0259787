"""Build wsd: one import package, `wsd`, mapped from the repository's layout, with its Cython
extensions. Metadata, dependencies and the `wsd` command are in pyproject.toml.

    server/   -> wsd.server     (supervisor, workers, protocol, admin; static/ holds what it serves)
    ext/      -> wsd.ext        (Cython hot paths, each with a pure-Python reference)
    balancer/ -> wsd.balancer   (the hash front's control plane)

`wsd` itself is a namespace package: it holds no code of its own, so it needs no directory.
"""

import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = Path(__file__).parent
PACKAGE_DIRS = {"wsd.server": "server", "wsd.ext": "ext", "wsd.balancer": "balancer"}


def packages() -> dict[str, str]:
    """Every package under the mapped directories (each directory with an __init__.py) -> its directory."""
    found = {}
    for package, directory in PACKAGE_DIRS.items():
        for init in sorted((HERE / directory).rglob("__init__.py")):
            relative = init.parent.relative_to(HERE)
            found[".".join((package, *init.parent.relative_to(HERE / directory).parts))] = relative.as_posix()
    found["wsd.server.static"] = "server/static"  # data only: the demo page and wsd.js
    return found


def cython_include_dir() -> str:
    """Cython resolves `cimport wsd.ext.atomics` to wsd/ext/atomics.pxd on its include path, but the
    sources live in ext/: give it a wsd/ext that is the ext directory."""
    include = HERE / "build" / "cython-include"
    link = include / "wsd" / "ext"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        os.symlink(os.path.relpath(HERE / "ext", link.parent), link)
    return str(include)


# One extension per ext/*.pyx: each module is one concept (ring, record codec, ...).
extensions = [
    Extension(f"wsd.ext.{pyx.stem}", [f"ext/{pyx.name}"], extra_compile_args=["-O2"])
    for pyx in sorted((HERE / "ext").glob("*.pyx"))
]

# Both steps on every core: ten modules of generated C take ~2 minutes one at a time, and every
# fresh install (a user's `pip install`, CI's packaging tests) builds them.
JOBS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

PACKAGES = packages()
setup(
    packages=list(PACKAGES),
    package_dir=PACKAGES,
    package_data={"wsd.server.static": ["*"], "wsd.ext": ["*.pxd", "*.pyx"]},
    exclude_package_data={"wsd.ext": ["*.c"]},
    ext_modules=cythonize(
        extensions,
        language_level=3,
        include_path=[cython_include_dir()],
        compiler_directives={"boundscheck": False, "wraparound": False},
        nthreads=JOBS if JOBS > 1 else 0,
    ),
    options={"build_ext": {"parallel": JOBS}},
)
