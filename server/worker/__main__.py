"""`python -P -m wsd.server.worker`: how the supervisor starts a worker process."""

import sys

from wsd.server.worker.process import main

sys.exit(main())
