"""`python -P -m wsd.server.worker`: how the supervisor starts a worker process."""

import sys

from wsd.server.worker.picows_core import import_picows_core

import_picows_core()  # before anything imports picows: its core without the client side

from wsd.server.worker.process import main  # noqa: E402 - after import_picows_core()

sys.exit(main())
