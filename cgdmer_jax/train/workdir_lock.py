"""One trainer per workdir: a lock file naming who trains there; stale locks are taken over.

Two trainers on one workdir race on the same checkpoint folders (Orbax then fails in the
second with a missing `commit_success.txt`, after both have written). The trainer therefore
holds `<workdir>/trainer.lock` while it runs: JSON with the pid, host, boot id, the process's
start time and when it started. It is created atomically (`O_CREAT | O_EXCL`) by process 0,
refreshed every `HEARTBEAT_S` seconds (its modification time) by a daemon thread, and removed
when the run ends.

A lock left by a run that was killed (SIGKILL, a node lost) must not block the restart, so an
existing lock is *stale*, and taken over with a warning, when
  * it was written on this host and its pid is not running, runs another program (the
    process start time differs: the pid was reused) or the machine has rebooted since (the
    boot id differs);
  * it was written on another host and its heartbeat is older than `stale_after_s` (a
    process on another machine cannot be asked directly; a live holder refreshes it).
Otherwise the second trainer stops with `WorkdirInUseError`:
"workdir W in use by pid P on host H since T".
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import threading
import time
from typing import Iterator

import jax
from absl import logging

LOCK_FILE = "trainer.lock"
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0


class WorkdirInUseError(RuntimeError):
  """Another live trainer holds the workdir's lock."""


def _boot_id() -> str:
  try:
    return pathlib.Path("/proc/sys/kernel/random/boot_id").read_text().strip()
  except OSError:
    return ""


def _start_time(pid: int) -> str:
  """The process's start time in clock ticks since boot (Linux), '' where unknown."""
  try:
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
  except OSError:
    return ""
  return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # someone else's process
  return True


def _stale_reason(holder: dict, heartbeat_age_s: float, stale_after_s: float) -> str | None:
  """Why the lock `holder` is stale, or None when its trainer may be running."""
  if holder.get("host") != socket.gethostname():
    if heartbeat_age_s > stale_after_s:
      return f"no heartbeat from host {holder.get('host')} for {heartbeat_age_s:.0f} s"
    return None
  pid = int(holder.get("pid", -1))
  if holder.get("boot_id") and holder["boot_id"] != _boot_id():
    return "the machine has rebooted since"
  if pid <= 0 or not _alive(pid):
    return f"pid {pid} is not running"
  if holder.get("start_time") and holder["start_time"] != _start_time(pid):
    return f"pid {pid} is now another process"
  return None


class WorkdirLock:
  """A held lock (process 0), or a stand-in on the other processes; `release()` ends it."""

  def __init__(self, path: pathlib.Path | None):
    self.path = path
    self._stop = threading.Event()
    self._thread = None
    if path is not None:
      self._thread = threading.Thread(target=self._beat, name="workdir_lock", daemon=True)
      self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      with contextlib.suppress(OSError):
        os.utime(self.path)

  def release(self) -> None:
    self._stop.set()
    if self.path is not None:
      with contextlib.suppress(FileNotFoundError):
        self.path.unlink()
      self.path = None


def _take(path: pathlib.Path, stale_after_s: float) -> pathlib.Path:
  me = {"pid": os.getpid(), "host": socket.gethostname(), "boot_id": _boot_id(),
        "start_time": _start_time(os.getpid()),
        "since": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())}
  for _ in range(3):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      try:
        holder = json.loads(path.read_text() or "{}")
        age = time.time() - path.stat().st_mtime
      except (OSError, ValueError):  # removed meanwhile, or half written: look again
        time.sleep(0.1)
        holder, age = None, 0.0
      if holder is None:
        continue
      reason = _stale_reason(holder, age, stale_after_s)
      if reason is None:
        raise WorkdirInUseError(
            f"workdir {path.parent} in use by pid {holder.get('pid')} on host "
            f"{holder.get('host')} since {holder.get('since')}: a second trainer here would "
            f"corrupt its checkpoints. Use another --workdir, or stop that run (a lock left "
            f"by a killed run is taken over by itself; {path} is the lock)")
      # Renaming is atomic: of two trainers taking over the same stale lock, one wins.
      with contextlib.suppress(FileNotFoundError):
        path.rename(path.with_name(f"{path.name}.stale-{os.getpid()}"))
        path.with_name(f"{path.name}.stale-{os.getpid()}").unlink()
        logging.warning("taking over the stale lock of %s (pid %s on host %s since %s): %s",
                        path.parent, holder.get("pid"), holder.get("host"),
                        holder.get("since"), reason)
      continue
    with os.fdopen(fd, "w") as f:
      json.dump(me, f)
    return path
  raise WorkdirInUseError(f"could not take the lock {path} (other trainers starting?)")


def acquire(workdir: str | os.PathLike, stale_after_s: float = STALE_AFTER_S) -> WorkdirLock:
  """Takes the workdir's lock (process 0 takes it; the other processes hold a stand-in).

  Args:
    workdir: the training workdir (created if missing).
    stale_after_s: a lock from another host without a heartbeat this long is stale.

  Returns:
    The `WorkdirLock`; call `release()` when training ends.

  Raises:
    WorkdirInUseError: (process 0) a live trainer holds the lock.
  """
  path, error = None, None
  if jax.process_index() == 0:
    pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
    try:
      path = _take(pathlib.Path(workdir) / LOCK_FILE, stale_after_s)
    except WorkdirInUseError as e:
      error = e
  # No collective here: the other processes learn of a refusal when process 0 exits (the
  # coordination service then stops them); a collective before the step's first one was
  # seen to desynchronise the CPU (Gloo) collectives of a two-process run.
  if error is not None:
    raise error
  return WorkdirLock(path)


@contextlib.contextmanager
def hold(workdir: str | os.PathLike) -> Iterator[WorkdirLock]:
  """Holds the workdir's lock while the block runs.

  Args:
    workdir: the training workdir.

  Returns:
    A context manager yielding the `WorkdirLock` (released on leaving the block).
  """
  lock = acquire(workdir)
  try:
    yield lock
  finally:
    lock.release()
