"""Shared plumbing for the absl binaries: flag parsing, runtime set-up and one-line
user errors.

Every binary starts with `cli.run(main)` instead of `app.run(main)`, so that a bad
command line (an unknown flag, a config override naming no config key, a value of the
wrong type) ends as one line `error: --flag: reason` with exit status 2, the same as
any other user error, instead of absl's usage text or ml_collections' traceback.

In a multi-process run, `setup_runtime` starts JAX's distributed runtime, connects the
processes' collectives and starts the watch on the peers (`training.distributed`).

Nothing here imports numpy or JAX at import time: a binary imports this module before
`allocator.keep_freed_memory` runs.
"""
import contextlib
import logging as logging_std
import os
import re
import sys
from typing import Callable, Sequence

from absl import app, flags, logging

from xtal2dos_jax.core.errors import InputError, one_line
from xtal2dos_jax.training import allocator, distributed

flags.DEFINE_string("coordinator_address", None,
                    "Multi-host: host:port of process 0 (else from the environment).")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.", lower_bound=1)
flags.DEFINE_integer("process_id", None, "Multi-host: index of this process.", lower_bound=0)
flags.DEFINE_bool("no_compilation_cache", False,
                  "Do not keep compiled XLA executables in ~/.cache/xtal2dos_jax.")
flags.DEFINE_integer("cpu_devices", None,
                     "CPU backend only: JAX devices to split the cores into, each running one "
                     "shard of every batch (default: one per core, at most 8, for evaluate "
                     "and predict; 1 = one device using all cores, for training). Ignored in "
                     "multi-process launches and by "
                     "XLA_FLAGS=--xla_force_host_platform_device_count.", lower_bound=1)


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
  from xtal2dos_jax.training import runtime
  if not flags.FLAGS.no_compilation_cache:
    runtime.enable_compilation_cache()
  f = flags.FLAGS
  launch = _multi_process_launch()
  if not launch:
    runtime.split_cpu_into_devices(f.cpu_devices if f.cpu_devices is not None
                                   else None if inference else 1)
  if launch and inference:
    with user_errors():
      raise InputError(launch[0], f"{launch[1]} processes requested, but this binary runs "
                       "as one process (only training is multi-host)")
  if launch and launch[0] == "--num_processes":
    # Cross-process collectives on CPU (ignored by GPU/TPU backends). Must be set
    # before anything initialises the backend, so no jax.devices() before this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    distributed.initialize(coordinator_address=f.coordinator_address,
                            num_processes=f.num_processes, process_id=f.process_id)
  elif launch:
    distributed.initialize()
  if launch:
    distributed.connect_collectives()
    distributed.start_peer_watch()
  logging.info("JAX %s: process %d/%d, %d local / %d global devices (%s); keep_freed_memory %s",
               jax.__version__, jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(), jax.default_backend(),
               f"on (set with {allocator.threads_when_applied} thread(s) running)"
               if allocator.applied else "off")


def _bad_command_line(flag: str, reason: str) -> None:
  print(f"error: {flag}: {one_line(reason)}", file=sys.stderr)
  sys.exit(2)


def _innermost_message(exc: BaseException) -> str:
  """The text of `exc`, unwrapped from the AttributeError(KeyError(text)) chain by which
  ml_collections reports a missing config key (its text holds the did-you-mean hint)."""
  while exc.args and isinstance(exc.args[0], BaseException):
    exc = exc.args[0]
  return str(exc.args[0]) if exc.args else str(exc)


def _override_naming(key: str, argv: Sequence[str], flag_names) -> str | None:
  """The first `--<flag>.<path>` argument, for a flag in `flag_names`, whose path has
  the component `key`."""
  for arg in argv[1:]:
    m = re.match(r"^--?(\w+)\.([\w.]+)(=|$)", arg)
    if m and m.group(1) in flag_names and key in m.group(2).split("."):
      return f"--{m.group(1)}.{m.group(2)}"
  return None


def _config_file_reason(text: str) -> str | None:
  """The reason in ml_collections' text for a config file that failed to load: the OS
  error of a missing file, or the last line of the traceback `get_config` raised."""
  if "Failed loading config file" in text:
    errno_text = re.search(r"\[Errno \d+\][^\n]*", text)
    return f"cannot load the config file ({errno_text.group(0) if errno_text else text})"
  if "Error whilst parsing config file" in text:
    lines = [line for line in text.splitlines() if line.strip()]
    return f"the config file raised {lines[-1].strip()}"
  return None


def _unloaded_config(flag_values: flags.FlagValues = flags.FLAGS) -> tuple[str, str] | None:
  """(flag, reason) for a config flag whose file could not be read: ml_collections
  defers that error until the config is first used, which would be mid-run."""
  from ml_collections.config_flags import config_flags  # the module, not the package
  error_config = getattr(config_flags, "_ErrorConfig", None)
  if error_config is None:
    return None
  for name in list(flag_values):
    value = flag_values[name].value
    if isinstance(value, error_config):
      error = vars(value).get("_error")
      return f"--{name}", _config_file_reason(str(error)) or str(error)
  return None


def _describe_flag_error(e: Exception, argv: Sequence[str], config_flag: str | None = None
                         ) -> tuple[str, str]:
  """(flag, one-line reason) of an error parsing `argv`. `config_flag` names the config
  flag whose overrides were being applied when that is known (see
  `define_config_file`); otherwise the flag is found in `argv`."""
  if isinstance(e, flags.UnrecognizedFlagError):
    suggestions = re.search(r"Did you mean: (.*?) ?\?", str(e))
    hint = (f"; did you mean --{' or --'.join(suggestions.group(1).split(', '))}?"
            if suggestions else "")
    return f"--{e.flagname}", f"unknown flag{hint}"
  if isinstance(e, flags.Error):
    # absl's text is "flag --name=value: reason" for a value it cannot parse.
    m = re.match(r"^flag (--[\w.]+)=(.*?): (.*)$", str(e), re.S)
    if not m:
      return "command line", str(e)
    if re.match(r"^Flag --[\w.]+ must have a value other than None\.?$", m.group(3)):
      return m.group(1), "is required"                  # flags.mark_flag_as_required
    reason = _config_file_reason(m.group(3))
    return m.group(1), f"{m.group(2)}: {reason}" if reason else m.group(3)
  # ml_collections raises plain errors for a config override naming no config key.
  message = _innermost_message(e)
  reason = _config_file_reason(message)
  key = None if reason else re.match(r"^'([^']+)'", message)
  if key:
    reason = (f"no config key '{key.group(1)}'"
              + message[key.end():].replace("\nDid you mean", ". Did you mean"))
  names = {config_flag} if config_flag else set(flags.FLAGS)
  flag = ((_override_naming(key.group(1), argv, names) if key else None)
          or f"--{config_flag or 'config'}")
  return flag, reason or f"{type(e).__name__}: {message}"


def parse_flags(argv: Sequence[str]) -> list[str]:
  """Parses the command line into absl's FLAGS; a bad one exits with status 2 after one
  line `error: --flag: reason`. The `flags_parser` of `run`."""
  try:
    remaining = flags.FLAGS(list(argv))
  except Exception as e:  # absl's flags.Error, or what ml_collections raises
    _bad_command_line(*_describe_flag_error(e, argv))
  unloaded = _unloaded_config()
  if unloaded:
    _bad_command_line(*unloaded)
  return remaining


def define_config_file(name: str, default: str, help_string: str, **kwargs):
  """`ml_collections.config_flags.DEFINE_config_file`, with a bad command line ending as
  one line `error: --flag: reason` (exit status 2).

  Without `--<name>=` on the command line, ml_collections loads the default config and
  applies the `--<name>.<key>=` overrides from sys.argv while the flag is defined, at
  import, before `run` parses anything; a typo in a key raises there."""
  from ml_collections import config_flags
  try:
    return config_flags.DEFINE_config_file(name, default, help_string, **kwargs)
  except Exception as e:  # the same errors as at parse time
    _bad_command_line(*_describe_flag_error(e, sys.argv, config_flag=name))


def load_config_file(path: str, overrides: Sequence[str] = ()):
  """The `ml_collections.ConfigDict` of the config file `path` with every `key=value` of
  `overrides` applied, loaded and overridden by ml_collections exactly as
  `--config=path --config.key=value` are on experiments.train: a value is parsed by the
  type of the key's default (`abc` for an int is refused, `false` is a bool, `(0.6, 0.2,
  0.2)` a tuple), a key the config lacks is refused with ml_collections' did-you-mean,
  and the config is locked (no new keys).

  Raises InputError naming `--configs` for a file that cannot be loaded and
  `--config_overrides=key=value` for a bad override (the flags of experiments.compare).
  """
  from ml_collections import config_flags
  for item in overrides:
    if "=" not in item or not item.partition("=")[0].strip():
      raise InputError(f"--config_overrides={item}", "expected key=value, e.g. "
                       "train.num_epochs=5")
  argv = ["", f"--config={path}", *(f"--config.{item.strip()}" for item in overrides)]
  parsed = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "The variant's config file.",
                                  flag_values=parsed, lock_config=True, sys_argv=argv)
  try:
    parsed(argv)
  except Exception as e:  # absl's flags.Error, or what ml_collections raises
    flag, reason = _describe_flag_error(e, argv, config_flag="config")
    item = next((item for item in overrides
                 if flag == f"--config.{item.partition('=')[0].strip()}"), None)
    raise InputError(f"--config_overrides={item}" if item else "--configs", reason) from None
  unloaded = _unloaded_config(parsed)
  if unloaded:
    raise InputError("--configs", unloaded[1])
  return parsed.config


def run(main: Callable[[list[str]], None]) -> None:
  """`absl.app.run(main)`, with the command line parsed by `parse_flags`; an
  `app.UsageError` raised by `main` is one line `error: ...` with exit status 2 too."""

  def main_with_one_line_usage_errors(argv):
    try:
      return main(argv)
    except app.UsageError as e:
      print(f"error: {one_line(e)}", file=sys.stderr)
      sys.exit(2)

  app.run(main_with_one_line_usage_errors, flags_parser=parse_flags)


def default_workdir(config_path: str) -> str:
  name = os.path.splitext(os.path.basename(config_path or "run"))[0]
  return os.path.join("runs", name)


@contextlib.contextmanager
def user_errors():
  """Prints an InputError as one line on stderr and exits with status 2."""
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
