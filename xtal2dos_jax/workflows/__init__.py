"""Stage 8, workflows over many runs and the binaries' plumbing: compare, sweep, the
speed benchmark (`benchmarks/`) and the command-line helpers of `experiments/` (`cli`).
Imports the stages below it."""
