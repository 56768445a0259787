"""Build wsd: the Python packages, the Cython extensions in ext/, and the `wsd` command."""

from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

HERE = Path(__file__).parent

# One extension per ext/*.pyx: each module is one concept (ring, record codec, ...).
extensions = [
    Extension(
        f"ext.{pyx.stem}",
        [f"ext/{pyx.name}"],
        extra_compile_args=["-O2"],
    )
    for pyx in sorted((HERE / "ext").glob("*.pyx"))
]

setup(
    name="wsd",
    version="0.1.0",
    description="A WebSocket push server that scales from one box to many",
    packages=find_packages(include=["server", "server.*", "ext", "balancer", "balancer.*"]),
    package_data={"server": ["static/*"], "ext": ["*.pxd", "*.pyx"]},
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False},
    ),
    python_requires=">=3.11",
    install_requires=[
        "picows>=2.3",
        "uvloop>=0.21",
        "psutil>=5.9",
        "setproctitle>=1.3",
        "httptools>=0.6",
        "orjson>=3.10",
        "multidict>=6.0",  # server/ws_conformance.py replaces picows's kept headers with an empty one
        "pyroute2>=0.9",
    ],
    extras_require={
        "test": [
            "pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100", "websockets>=13", "ruff>=0.5",
            "locust>=2.40", "matplotlib>=3.8",  # bench/locustfile.py and the plot of bench/connections.py
        ],  # fmt: skip
    },
    entry_points={"console_scripts": ["wsd=server.cli:main"]},
)
