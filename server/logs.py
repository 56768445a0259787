"""Logging set-up shared by the supervisor and the workers: one line per event, with its source."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str, source: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s wsd[{source}] %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # picows logs every rejected handshake at INFO; that is noise at our default level.
    logging.getLogger("picows").setLevel(max(logging.WARNING, root.level))
