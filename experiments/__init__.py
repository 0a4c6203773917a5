"""Command-line binaries (absl): train, evaluate, predict, compare, benchmark."""
