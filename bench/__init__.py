"""wsd's benchmarks. Run each from the repository root as a module, e.g. `python -m bench.fanout`;
what they share with the tests (wsd as a subprocess, the load generator) is in harness/."""
