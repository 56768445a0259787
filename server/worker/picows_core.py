"""Import picows's WebSocket core (picows.picows, picows.common) in a worker without its client side.

`import picows` runs picows/__init__.py, which imports picows.api for ws_connect: its proxy support
(python_socks) and aiofastnet, ~110 modules and ~3 MiB of every worker's memory that a server never
uses (wsd builds picows's WSProtocol itself, wsd.server.worker.accept). The worker's entry point calls
`import_picows_core()` before anything imports picows: the package is then registered without running
its __init__, so `picows.picows` and `picows.common` import on their own. Nothing is lost: the first
attribute asked of the package itself (`picows.ws_connect`, `from picows import WSFrame`) runs the
real __init__ then, and from there on picows is exactly what `import picows` makes.
Worker code therefore imports from picows.picows and picows.common, never from picows.

aiofastnet is marked absent in a worker (None in sys.modules, so `import aiofastnet` raises
ImportError). wsd never serves on it (create_peer_aware_server refuses use_aiofastnet), yet every new
picows WSTransport asks whether its transport is an aiofastnet one by importing aiofastnet (picows.pyx,
_is_aiofn_transport): ~2 MiB (aiofastnet, tempfile, shutil, bz2, lzma) on a worker's first
connection, for an answer that is always no. Absent, the check answers no at once (it catches the
ImportError), as it does where aiofastnet is not installed.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any


def import_picows_core() -> None:
    """Register the picows package without running its __init__ (unless picows is imported already),
    and mark aiofastnet absent."""
    sys.modules.setdefault("aiofastnet", None)  # type: ignore[assignment]
    if "picows" in sys.modules:
        return
    spec = importlib.util.find_spec("picows")
    if spec is None or spec.loader is None:  # pragma: no cover - picows is a declared dependency
        return
    package = importlib.util.module_from_spec(spec)

    def complete(name: str) -> Any:
        # Something asked the package for a name: it becomes the whole of picows now.
        del package.__getattr__
        spec.loader.exec_module(package)
        return getattr(package, name)

    package.__getattr__ = complete  # PEP 562: asked only for names the package does not hold yet
    sys.modules["picows"] = package
