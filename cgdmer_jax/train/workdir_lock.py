"""One trainer per workdir: a lock file naming who trains there; stale locks are taken over.

Two trainers on one workdir race on the same checkpoint folders (Orbax then fails in the
second with a missing `commit_success.txt`, after both have written). The trainer therefore
holds `<workdir>/trainer.lock` while it runs: JSON with the pid, host, boot id, the process's
start time, when it started and its last heartbeat. Process 0 takes it, a daemon thread
refreshes it every `HEARTBEAT_S` seconds, and it is removed when the run ends.

How it is taken depends on the storage (every path goes through `etils.epath`):
  * a local or shared POSIX file system: created atomically (`O_CREAT | O_EXCL`); the
    heartbeat is the file's modification time;
  * object storage (`gs://`, `s3://`...: no exclusive create, no atomic rename through
    `epath`): the lock is written with a random token, read back after `SETTLE_S` seconds and
    held only if the token is still ours. This relies on what GCS and S3 guarantee: an object
    write is atomic and a read after it sees the last completed write. Of two trainers that
    both found no lock and wrote one within `SETTLE_S` of each other, both read back the
    later write and only its writer goes on. The heartbeat is a field rewritten in the JSON.

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
import socket
import threading
import time
import uuid
from typing import Iterator

import jax
from absl import logging
from etils import epath

from data_pipelines.tfrecord import is_object_storage

LOCK_FILE = "trainer.lock"
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0
SETTLE_S = 2.0  # object storage: how long a written lock must survive before it is held


class WorkdirInUseError(RuntimeError):
  """Another live trainer holds the workdir's lock."""


def _boot_id() -> str:
  try:
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:  # this machine's
      return f.read().strip()
  except OSError:
    return ""


def _start_time(pid: int) -> str:
  """The process's start time in clock ticks since boot (Linux), '' where unknown."""
  try:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:  # this machine's process table
      stat = f.read()
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

  def __init__(self, path: epath.Path | None, holder: dict | None = None):
    self.path = path
    self._holder = holder
    self._stop = threading.Event()
    self._thread = None
    if path is not None:
      self._thread = threading.Thread(target=self._beat, name="workdir_lock", daemon=True)
      self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      with contextlib.suppress(OSError):
        if is_object_storage(self.path):
          self._holder["heartbeat"] = time.time()
          self.path.write_text(json.dumps(self._holder))
        else:
          os.utime(self.path)

  def release(self) -> None:
    self._stop.set()
    if self.path is not None:
      with contextlib.suppress(FileNotFoundError):
        self.path.unlink()
      self.path = None


def _me() -> dict:
  return {"pid": os.getpid(), "host": socket.gethostname(), "boot_id": _boot_id(),
          "start_time": _start_time(os.getpid()),
          "since": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime()),
          "heartbeat": time.time(), "token": uuid.uuid4().hex}


def _read(path: epath.Path) -> tuple[dict, float] | None:
  """(holder, heartbeat age in seconds) of an existing lock; None if gone or half written."""
  try:
    holder = json.loads(path.read_text() or "{}")
    beat = holder.get("heartbeat")
    age = time.time() - (float(beat) if beat is not None else path.stat().mtime)
  except (OSError, ValueError):
    return None
  return holder, age


def _refuse(path: epath.Path, holder: dict) -> WorkdirInUseError:
  return WorkdirInUseError(
      f"workdir {path.parent} in use by pid {holder.get('pid')} on host "
      f"{holder.get('host')} since {holder.get('since')}: a second trainer here would "
      f"corrupt its checkpoints. Use another --workdir, or stop that run (a lock left "
      f"by a killed run is taken over by itself; {path} is the lock)")


def _create(path: epath.Path, me: dict) -> bool:
  """Writes the lock if none is there; whether this process now holds it."""
  if not is_object_storage(path):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      json.dump(me, f)
    return True
  if path.exists():
    return False
  path.write_text(json.dumps(me))
  time.sleep(SETTLE_S)  # a trainer that wrote after us within this window wins: see above
  got = _read(path)
  return got is not None and got[0].get("token") == me["token"]


def _take(path: epath.Path, stale_after_s: float) -> dict:
  me = _me()
  for _ in range(3):
    if _create(path, me):
      return me
    got = _read(path)
    if got is None:  # removed meanwhile, or half written: look again
      time.sleep(0.1)
      continue
    holder, age = got
    reason = _stale_reason(holder, age, stale_after_s)
    if reason is None:
      raise _refuse(path, holder)
    if is_object_storage(path):
      path.unlink(missing_ok=True)  # the next _create settles who takes it
    else:
      # Renaming is atomic: of two trainers taking over the same stale lock, one wins.
      with contextlib.suppress(FileNotFoundError):
        aside = path.with_name(f"{path.name}.stale-{os.getpid()}")
        path.rename(aside)
        aside.unlink()
    logging.warning("taking over the stale lock of %s (pid %s on host %s since %s): %s",
                    path.parent, holder.get("pid"), holder.get("host"), holder.get("since"),
                    reason)
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
  path, holder, error = None, None, None
  if jax.process_index() == 0:
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    try:
      path = epath.Path(workdir) / LOCK_FILE
      holder = _take(path, stale_after_s)
    except WorkdirInUseError as e:
      error = e
  # No collective here: the other processes learn of a refusal when process 0 exits (the
  # coordination service then stops them); a collective before the step's first one was
  # seen to desynchronise the CPU (Gloo) collectives of a two-process run.
  if error is not None:
    raise error
  return WorkdirLock(path, holder)


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
