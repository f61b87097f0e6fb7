"""Device prefetch for the training loop: global batches built ahead on a background thread.

The trainer's step is dispatched asynchronously, so while step t runs the host is free; this
module uses that time to read the next process-local numpy batches and start their
host-to-device copies (`sharding.global_batch`), so that neither the reader's jitter nor the
copy sits between two steps. The stream's order is unchanged (a resumed run reads the same
batches), and an error in the reader is raised in the consumer at the batch where it occurred.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator

import jax
import numpy as np

from cgdmer_jax.train import sharding


def device_batches(local_batches: Iterator[dict[str, np.ndarray]], mesh: jax.sharding.Mesh,
                   prefetch: int) -> Iterator[dict[str, jax.Array]]:
  """Global device batches from process-local numpy batches, built `prefetch` steps ahead
  on a background thread (see the module docstring); `prefetch=0` builds each on demand."""
  if prefetch <= 0:
    for local in local_batches:
      yield sharding.global_batch(local, mesh)
    return
  ready: queue.Queue = queue.Queue(maxsize=prefetch)
  stop = threading.Event()
  done = object()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        ready.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def produce() -> None:
    try:
      for local in local_batches:
        if not put(sharding.global_batch(local, mesh)):
          return
      put(done)
    except BaseException as e:  # re-raised in the consumer
      put(e)

  thread = threading.Thread(target=produce, name="device_prefetch", daemon=True)
  thread.start()
  try:
    while True:
      item = ready.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    thread.join(timeout=5)
