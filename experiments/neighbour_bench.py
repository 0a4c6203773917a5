"""Neighbour search speed: `python -m experiments.neighbour_bench`.

Times the featuriser's neighbour search against the brute-force reference the tests hold
it to, on 8-256-atom supercells of one shipped crystal
(`xtal2dos_jax/workflows/benchmarks/neighbours.py`).
"""
from xtal2dos_jax.workflows.benchmarks import neighbours

if __name__ == "__main__":
  neighbours.main()
