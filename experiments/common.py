"""Shared plumbing for the absl binaries: flag parsing, runtime set-up and one-line
user errors.

Every binary starts with `common.run(main)` instead of `app.run(main)`, so that a bad
command line (an unknown flag, a config override naming no config key, a value of the
wrong type) ends as one line `error: --flag: reason` with exit status 2, the same as
any other user error, instead of absl's usage text or ml_collections' traceback.

In a multi-process run, `setup_runtime` connects the processes' collectives while they
are in step (`connect_collectives`) and starts a watch on the peers (`_PeerWatch`);
training runs inside `lost_processes`, so that a lost peer ends the others with one
line saying which process was lost and that rerunning the same command on every host
resumes (exit status LOST_PROCESS_EXIT).
"""
import contextlib
import logging as logging_std
import os
import re
import sys
import threading
import time
from typing import Callable, Sequence

from absl import app, flags, logging

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
  from xtal2dos_jax import runtime
  if not flags.FLAGS.no_compilation_cache:
    runtime.enable_compilation_cache()
  f = flags.FLAGS
  launch = _multi_process_launch()
  if not launch:
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
    _initialize_distributed(coordinator_address=f.coordinator_address,
                            num_processes=f.num_processes, process_id=f.process_id)
  elif launch:
    _initialize_distributed()
  if launch:
    connect_collectives()
    _start_peer_watch()
  from xtal2dos_jax import allocator
  logging.info("JAX %s: process %d/%d, %d local / %d global devices (%s); keep_freed_memory %s",
               jax.__version__, jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(), jax.default_backend(),
               f"on (set with {allocator.threads_when_applied} thread(s) running)"
               if allocator.applied else "off")


def _bad_command_line(flag: str, reason: str) -> None:
  from xtal2dos_jax.errors import one_line
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
  from xtal2dos_jax.errors import InputError
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
      from xtal2dos_jax.errors import one_line
      print(f"error: {one_line(e)}", file=sys.stderr)
      sys.exit(2)

  app.run(main_with_one_line_usage_errors, flags_parser=parse_flags)


# How long processes wait for each other at start-up (the default of
# jax.distributed.initialize's initialization_timeout).
_START_UP_TIMEOUT_S = 300
# Each process of a multi-process run beats in the coordination service's key-value
# store every _BEAT_S; a peer whose beat has not changed for PEER_SILENCE_S is lost.
_BEAT_S = 1.0
PEER_SILENCE_S = 20.0
# The coordination service's own heartbeat timeout. Longer than PEER_SILENCE_S, so a
# lost peer is reported by `_PeerWatch` first: when the service notices, it aborts
# every process with a C++ stack trace ("Fatal Python error: Aborted"), and its error
# callback cannot be a Python function (jaxlib fails converting the status).
HEARTBEAT_TIMEOUT_S = 60
# Exit status of a process that lost a peer: a temporary failure (EX_TEMPFAIL), since
# rerunning the same command on every host resumes from the last checkpoint.
LOST_PROCESS_EXIT = 75
# Texts of the errors a collective raises when a peer process is gone (gloo on CPU).
_LOST_PEER_TEXT = re.compile(
    r"Gloo|Connection reset|Connection refused|Connection closed|Broken pipe|heartbeat|"
    r"unhealthy|[Cc]oordination ?[Ss]ervice|failed to connect")
# Key-value-store values of a process's beat besides its counter.
_FINISHED, _FAILED = "finished", "failed"

# The workdir of the run in progress, named in the lost-process message.
_lost_process_workdir: str | None = None
_peer_watch: "_PeerWatch | None" = None


def _initialize_distributed(**kwargs) -> None:
  """`jax.distributed.initialize` with the `HEARTBEAT_TIMEOUT_S` heartbeat timeout."""
  import jax
  jax.distributed.initialize(heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S, **kwargs)


def _process_ids() -> tuple[int, int]:
  """(this process's id, number of processes) of the distributed runtime."""
  from jax._src import distributed
  state = distributed.global_state
  return int(state.process_id or 0), int(state.num_processes or 1)


def _resume_text(workdir: str | None) -> str:
  if not workdir:
    return "from the last checkpoint"
  from xtal2dos_jax import workdir as workdir_lib
  last = workdir_lib.last_checkpoint(workdir_lib.Workdir(workdir).checkpoint_dir)
  if last is None:
    return "from the start (no checkpoint was saved yet)"
  epoch, step_in_epoch = last
  return (f"from epoch {epoch}" if not step_in_epoch
          else f"from epoch {epoch + 1} step {step_in_epoch}")


def lost_process_message(reason: str, lost: Sequence[int] | None = None,
                         workdir: str | None = None) -> str:
  """One line: which process was lost and why, that this one stops, and that rerunning
  the same command on every host resumes (from the last checkpoint in `workdir`).
  Without `lost`, with two processes, the lost one is the other."""
  from xtal2dos_jax.errors import one_line
  me, count = _process_ids()
  if lost:
    who = f"process{'es' if len(lost) > 1 else ''} {', '.join(map(str, lost))} of {count}"
  elif count == 2:
    who = f"process {1 - me} of 2"
  else:
    who = f"another of the {count} processes"
  return (f"error: lost {who} ({one_line(reason)[:200]}); process {me} stops. Nothing is "
          f"lost: rerun the same command on every host to resume {_resume_text(workdir)}")


def _exit_lost_process(reason: str, lost: Sequence[int] | None = None) -> None:
  print(lost_process_message(reason, lost, _lost_process_workdir), file=sys.stderr,
        flush=True)
  # os._exit: a normal exit runs jax's shutdown barrier, which waits for the lost
  # process and then aborts.
  os._exit(LOST_PROCESS_EXIT)


class _PeerWatch(threading.Thread):
  """Beats for this process in the coordination service's key-value store and watches
  the other processes' beats; ends this process with one line (`_exit_lost_process`)
  when a peer goes silent for PEER_SILENCE_S, reports that it failed, or the service
  itself (process 0) cannot be reached. A peer that reports `finished` is no longer
  watched. Runs on its own thread, because the main thread of a process whose peer is
  gone waits inside a collective."""

  def __init__(self, client, me: int, count: int):
    super().__init__(name="xtal2dos_jax_peer_watch", daemon=True)
    self.client, self.me = client, me
    self.peers = [p for p in range(count) if p != me]
    self.halt = threading.Event()

  @staticmethod
  def key(process: int) -> str:
    return f"xtal2dos_jax/beat/{process}"

  def report(self, value: str) -> None:
    """Stops beating and leaves `value` (_FINISHED or _FAILED) for the peers."""
    self.halt.set()
    try:
      self.client.key_value_set(self.key(self.me), value, allow_overwrite=True)
    except Exception:  # the service is gone too; nothing to tell
      pass

  def run(self) -> None:
    beat = 0
    now = time.monotonic()
    seen = {p: (None, now) for p in self.peers}   # last value, when it last changed
    while not self.halt.wait(_BEAT_S):
      try:
        self.client.key_value_set(self.key(self.me), str(beat), allow_overwrite=True)
      except Exception as e:  # the coordination service (process 0) is unreachable
        if self.halt.is_set():
          return
        if self.me != 0:
          _exit_lost_process(f"the coordination service stopped answering: {e}", [0])
        return
      beat += 1
      now = time.monotonic()
      for peer in list(seen):
        try:
          value = self.client.key_value_try_get(self.key(peer))
        except Exception:  # not written yet
          value = None
        if value == _FINISHED:
          del seen[peer]
        elif value == _FAILED:
          _exit_lost_process("it stopped: an error or a preemption, see its log", [peer])
        elif value != seen[peer][0]:
          seen[peer] = (value, now)
        elif now - seen[peer][1] > PEER_SILENCE_S and not self.halt.is_set():
          _exit_lost_process(f"no sign of life for {PEER_SILENCE_S:g} s", [peer])


def _start_peer_watch() -> None:
  global _peer_watch
  from jax._src import distributed  # the client is not public API
  client = distributed.global_state.client
  me, count = _process_ids()
  if client is None or count < 2 or _peer_watch is not None:
    return
  _peer_watch = _PeerWatch(client, me, count)
  _peer_watch.start()


def is_lost_peer_error(error: BaseException) -> bool:
  """Whether `error` (raised by a collective in a multi-process run) says that a peer
  process is gone rather than, e.g., that memory ran out."""
  import jax
  return (isinstance(error, jax.errors.JaxRuntimeError) and _process_ids()[1] > 1
          and bool(_LOST_PEER_TEXT.search(str(error))))


@contextlib.contextmanager
def lost_processes(workdir: str):
  """Ends a multi-process run whose peer is gone with one line on stderr (which process,
  and that rerunning the same command on every host resumes from the last checkpoint
  in `workdir`) and exit status LOST_PROCESS_EXIT, instead of a traceback followed by
  an abort: when a collective fails with a connection error here, or when `_PeerWatch`
  finds a peer silent. On leaving, tells the peers whether this process finished or
  failed, so that a peer waiting for it in a collective stops too."""
  global _lost_process_workdir
  _lost_process_workdir = workdir
  finished = False
  try:
    yield
    finished = True
  except Exception as e:  # jax.errors.JaxRuntimeError, checked below
    if is_lost_peer_error(e):
      _exit_lost_process(str(e).splitlines()[0] if str(e) else type(e).__name__)
    raise
  finally:
    if _peer_watch is not None:
      _peer_watch.report(_FINISHED if finished else _FAILED)
    _lost_process_workdir = None


def connect_collectives() -> None:
  """Sets up the cross-process collectives of a multi-process run while every process
  is at the same point: a key-value-store barrier, then one psum over all devices.

  XLA's CPU (gloo) collectives connect the processes at the first collective over a
  set of devices, and give up if a peer is not there within a fixed 30 s. Left to the
  first training step, that races with compilation: process 0 loads the step from the
  persistent compilation cache (only process 0 writes it) while the others compile it,
  which on a loaded machine takes longer than 30 s. Connected here, the training step
  reuses the connection, whose collectives wait for slower peers."""
  import jax
  import numpy as np
  from jax._src import distributed  # the client's barrier is not public API
  client = distributed.global_state.client
  if client is not None and hasattr(client, "wait_at_barrier"):
    client.wait_at_barrier("xtal2dos_jax_connect_collectives", _START_UP_TIMEOUT_S * 1000)
  ones = np.ones(jax.local_device_count(), np.float32)
  total = jax.pmap(lambda x: jax.lax.psum(x, "p"), axis_name="p")(ones)
  jax.block_until_ready(total)


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
