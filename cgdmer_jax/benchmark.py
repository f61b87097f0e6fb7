"""`python -m cgdmer_jax.benchmark ...`: the step benchmark, `cgdmer_jax/perf/benchmark.py`.

Kept as the documented command name; it runs the program in `cgdmer_jax.perf` with the same
arguments. Nothing is imported before the forward, so `--devices=N` can still set up fake CPU
devices before JAX starts.
"""

import runpy

if __name__ == "__main__":
  runpy.run_module("cgdmer_jax.perf.benchmark", run_name="__main__", alter_sys=True)
