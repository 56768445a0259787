"""`python -m wsd.server ARGS...`: the same as the `wsd ARGS...` command."""

import sys

from wsd.server.control.cli import main

sys.exit(main())
