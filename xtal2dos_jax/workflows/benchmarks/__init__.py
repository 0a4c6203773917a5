"""The speed benchmark of `python -m experiments.benchmark`: the harness, its rows
and tools, the scaling studies, compile counting and the neighbour-search timing."""
