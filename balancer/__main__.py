"""`python -m wsd.balancer ARGS...`: the same as `wsd balancer ARGS...`."""

import sys

from wsd.balancer.cli import main

sys.exit(main(sys.argv[1:]))
