"""Command-line binaries (absl): train, evaluate, predict, compare, benchmark."""
import sys

from xtal2dos_jax.allocator import keep_freed_memory

# Inference-only binaries skip it: their step buffers are small, and their threads (one
# JAX device per core, runtime.split_cpu_into_devices) would contend for the single malloc
# arena it sets up, costing ~10% of prediction throughput (BUILD_NOTES.md).
INFERENCE_BINARIES = ("experiments.evaluate", "experiments.predict")

if not set(INFERENCE_BINARIES) & set(getattr(sys, "orig_argv", ())):
  keep_freed_memory()  # before numpy/jax create their threads; see xtal2dos_jax/allocator.py
