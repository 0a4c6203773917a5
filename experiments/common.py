"""Shared plumbing for the absl binaries: runtime set-up and one-line user errors."""
import contextlib
import logging as logging_std
import os
import sys

from absl import flags, logging

flags.DEFINE_string("coordinator_address", None,
                    "Multi-host: host:port of process 0 (else from the environment).")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: index of this process.")
flags.DEFINE_bool("no_compilation_cache", False,
                  "Do not keep compiled XLA executables in ~/.cache/xtal2dos_jax.")
flags.DEFINE_integer("cpu_devices", None,
                     "CPU backend only: JAX devices to split the cores into, each running one "
                     "shard of every batch (default: one per core, at most 8, for evaluate "
                     "and predict; 1 = one device using all cores, for training). Ignored in "
                     "multi-process launches and by "
                     "XLA_FLAGS=--xla_force_host_platform_device_count.")


class _QuietLibraries(logging_std.Filter):
  """Drops INFO chatter of Orbax/JAX internals from the absl log; keeps warnings."""

  def filter(self, record):
    noisy = any(p in record.pathname for p in ("/orbax/", "/jax/_src/", "/etils/"))
    return record.levelno >= logging_std.WARNING or not noisy


def _multi_process_launch() -> tuple[str, str] | None:
  """(what asked for it, how many processes) if this is a multi-process launch: the
  --num_processes flag, or SLURM / JAX's coordinator variables in the environment."""
  f = flags.FLAGS
  if f.num_processes and f.num_processes > 1:
    return "--num_processes", str(f.num_processes)
  if "SLURM_NTASKS" in os.environ:
    ntasks = os.environ["SLURM_NTASKS"]
    return ("SLURM_NTASKS", ntasks) if int(ntasks) > 1 else None
  if "JAX_COORDINATOR_ADDRESS" in os.environ:
    return "JAX_COORDINATOR_ADDRESS", "several"
  return None


def setup_runtime(inference: bool = False) -> None:
  """Quiets library logs; sets the CPU device count; initialises JAX's distributed
  runtime when asked.

  `inference` binaries (evaluate, predict) run one CPU device per core by default
  (`runtime.split_cpu_into_devices`: ~40% more predictions/s on 2 cores) and refuse a
  multi-process launch with a one-line error instead of writing partial results from
  every process. Training keeps one CPU device using all cores: data parallelism over
  cores does not train the comparison model faster and slows the paper-size one.
  """
  logging.get_absl_handler().addFilter(_QuietLibraries())
  import jax
  from xtal2dos_jax import runtime
  if not flags.FLAGS.no_compilation_cache:
    runtime.enable_compilation_cache()
  f = flags.FLAGS
  launch = _multi_process_launch()
  if not launch:
    with user_errors():
      runtime.split_cpu_into_devices(f.cpu_devices if f.cpu_devices is not None
                                     else None if inference else 1)
  if launch and inference:
    with user_errors():
      from xtal2dos_jax.errors import InputError
      raise InputError(launch[0], f"{launch[1]} processes requested, but this binary runs "
                       "as one process (only training is multi-host)")
  if launch and launch[0] == "--num_processes":
    # Cross-process collectives on CPU (ignored by GPU/TPU backends). Must be set
    # before anything initialises the backend, so no jax.devices() before this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f.coordinator_address,
                               num_processes=f.num_processes, process_id=f.process_id)
  elif launch:
    jax.distributed.initialize()
  from xtal2dos_jax import allocator
  logging.info("JAX %s: process %d/%d, %d local / %d global devices (%s); keep_freed_memory %s",
               jax.__version__, jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(), jax.default_backend(),
               "on" if allocator.applied else "off")


def default_workdir(config_path: str) -> str:
  name = os.path.splitext(os.path.basename(config_path or "run"))[0]
  return os.path.join("runs", name)


@contextlib.contextmanager
def user_errors():
  """Prints an InputError as one line on stderr and exits with status 2."""
  from xtal2dos_jax.errors import InputError
  try:
    yield
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def checkpoint_used(out: dict) -> str:
  """`best, epoch N` or `latest, epoch N` (checkpoints/best missing) from an evaluation's
  output; only the epoch where the output does not say which kind was restored."""
  checkpoint = out.get("checkpoint")
  if checkpoint:
    return f"{checkpoint['kind']}, epoch {checkpoint['epoch']}"
  return f"epoch {out['best_epoch']}"
