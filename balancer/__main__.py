"""`python -m balancer ARGS...`: the same as `wsd balancer ARGS...`."""

import sys

from balancer.cli import main

sys.exit(main(sys.argv[1:]))
