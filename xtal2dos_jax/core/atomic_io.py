"""Files written atomically, with the mode a plain open() would give.

Every JSON / npz / text file a run, an export or a prediction writes goes through
`write_*_atomic`: a temp file in the target's directory, fsync, then a rename, so a kill
or a full disk leaves the old or the new file, never a torn one. The temp file gets the
mode `open(path, "w")` would (0o666 & ~umask) instead of mkstemp's 0600, so files stay
readable to collaborators on a shared filesystem.
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
from typing import IO, Any, Callable

import numpy as np


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
  """The process umask. Read from /proc/self/status where Linux provides it, since
  os.umask can only be read by setting it, which races with other threads creating
  files; elsewhere it is swapped briefly (under a lock, to the restrictive 0o077)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  with _UMASK_LOCK:
    mask = os.umask(0o077)
    os.umask(mask)
  return mask


def mkstemp_like_open(directory: str, suffix: str = ".tmp") -> tuple[int, str]:
  """`tempfile.mkstemp` in `directory`, with the file's mode set to what a plain
  `open(path, "w")` gives (0o666 & ~umask) instead of mkstemp's 0600.

  Files written to a temp file and renamed into place keep the temp file's mode, so
  without this every config.json / results.json would be unreadable to collaborators
  on a shared filesystem whatever their umask allows."""
  fd, tmp = tempfile.mkstemp(dir=directory, suffix=suffix)
  try:
    os.fchmod(fd, 0o666 & ~current_umask())
  except BaseException:
    os.close(fd)
    os.remove(tmp)
    raise
  return fd, tmp


def _write_atomic(path: str, write: Callable[[IO], None], binary: bool = False) -> None:
  """Calls `write(file)` on a temp file in `path`'s directory, then renames it to
  `path`, so a kill or a full disk leaves the old or the new file, never a torn one;
  the mode follows the umask (see `mkstemp_like_open`)."""
  fd, tmp = mkstemp_like_open(os.path.dirname(os.path.abspath(path)))
  try:
    with os.fdopen(fd, "wb" if binary else "w") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_text_atomic(path: str, text: str) -> None:
  """`text` at `path`, atomically (see `_write_atomic`)."""
  _write_atomic(path, lambda f: f.write(text))


def write_json_atomic(path: str, obj: Any) -> None:
  """`obj` as indented JSON at `path`, atomically (see `_write_atomic`)."""
  _write_atomic(path, lambda f: json.dump(obj, f, indent=1))


def write_npz_atomic(path: str, **arrays: np.ndarray) -> None:
  """`arrays` as an uncompressed .npz at `path`, atomically (see `_write_atomic`)."""
  _write_atomic(path, lambda f: np.savez(f, **arrays), binary=True)
