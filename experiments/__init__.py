"""Command-line binaries (absl): train, evaluate, predict, compare, benchmark."""
from xtal2dos_jax.allocator import keep_freed_memory

keep_freed_memory()  # before numpy/jax create their threads; see xtal2dos_jax/allocator.py
