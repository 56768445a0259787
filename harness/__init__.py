"""What the tests and the benchmarks share: `wsd serve` run as a subprocess on free ports
(`wsd_process`), loopback ports and source addresses (`net`), and the picows load generator
(`loadgen`, with its listeners and HTTP publisher).

It lives in the repository only, not in the installed `wsd` package: import it with the repository
root on `sys.path`, which pytest does for the tests and `python -m bench.<name>` from the root does
for the benchmarks.
"""
