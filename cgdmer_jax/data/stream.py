"""The training stream of serialized records, addressable by position: resuming costs one group.

One process's shard files define an endless stream, a pure function of (files, their lengths,
seed, cycle_length, shuffle_buffer):

* epoch e visits the files in the order of a stateless shuffle seeded by (seed, e);
* the epoch's order is cut into groups of `cycle_length` files; a group's files are read
  interleaved one record at a time (deterministically) and pass a shuffle buffer seeded by
  (seed, group number), which drains at the end of the group;
* groups follow each other across epochs without a seam: group t is group t % G of epoch
  t // G (G groups per epoch).

So record p of the stream lies in a group that is found from the metadata's shard lengths
alone (`locate`), and a stream that starts at record p reads only that group's records before
p: resuming at any step costs at most one group (cycle_length shards), not the k x batch
records a single shuffle buffer over the whole stream would need. The shuffle still mixes
`cycle_length` files through a `shuffle_buffer`-record window, as a run that never stops.

Record counts come from the metadata. With `on_corrupt='skip'` a damaged record that is
skipped shortens its group, so a resumed stream over damaged shards is positioned by the
metadata's counts (up to the damaged records of the groups before, fewer than one batch per
damaged record), not exactly: rebuild damaged shards for exact resumption.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

_AUTOTUNE = tf.data.AUTOTUNE
_INT31 = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Position:
  """Where record `record` of a stream lies: group `group` (flat over epochs), `offset` in it."""
  record: int
  group: int
  offset: int
  epoch: int


def _order(num_files: int, seed: int | tf.Tensor, epoch) -> tf.Tensor:
  """Epoch `epoch`'s file order (the same op in the graph and eagerly in `locate`)."""
  return tf.random.experimental.stateless_shuffle(
      tf.range(num_files, dtype=tf.int64),
      seed=tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)]))


def _groups_per_epoch(num_files: int, cycle_length: int) -> int:
  return -(-num_files // cycle_length)


def locate(lengths: Sequence[int], *, seed: int, cycle_length: int, record: int) -> Position:
  """The group (flat over epochs) and offset of record `record` of the stream.

  Args:
    lengths: records per file, in the order of the files passed to `serialized`.
    seed: the stream's seed.
    cycle_length: files per group.
    record: position in the stream (0-based).

  Returns:
    The `Position`; its cost is one epoch's file order, whatever `record` is.

  Raises:
    ValueError: a negative position, or files that hold no record.
  """
  if record < 0:
    raise ValueError(f"stream position must be >= 0, got {record}")
  n, per_epoch = len(lengths), int(sum(lengths))
  if not n or per_epoch <= 0:
    raise ValueError("the stream's files hold no record")
  c = min(cycle_length, n)
  epoch, offset = divmod(int(record), per_epoch)
  order = _order(n, seed, epoch).numpy()
  lengths = np.asarray(lengths, np.int64)
  for g in range(_groups_per_epoch(n, c)):
    size = int(lengths[order[g * c:(g + 1) * c]].sum())
    if offset < size:
      return Position(record, epoch * _groups_per_epoch(n, c) + g, offset, epoch)
    offset -= size
  raise AssertionError("unreachable: the groups of an epoch hold all its records")


def serialized(files: Sequence[str], lengths: Sequence[int], *, seed: int, shuffle_buffer: int,
               cycle_length: int, records: Callable[[tf.Tensor], tf.data.Dataset],
               start_record: int = 0) -> tf.data.Dataset:
  """The endless stream of `files`' serialized records from record `start_record` on.

  Args:
    files: this process's shard paths.
    lengths: records per file (the metadata's shard lengths), aligned with `files`.
    seed: shuffling seed.
    shuffle_buffer: records in a group's shuffle buffer.
    cycle_length: files per group, read interleaved.
    records: file path -> dataset of its serialized records (`shard_scan.records_fn`).
    start_record: first record to yield; only its group's earlier records are read.

  Returns:
    A `tf.data.Dataset` of serialized examples (not parsed).
  """
  n = len(files)
  if n != len(lengths):
    raise ValueError(f"{n} files but {len(lengths)} lengths")
  c = min(cycle_length, n)
  per_epoch = _groups_per_epoch(n, c)
  start = locate(lengths, seed=seed, cycle_length=c, record=start_record)
  files_t = tf.constant(list(files))
  seed_t = tf.constant(seed, tf.int64)

  def group(t):
    epoch, g = t // per_epoch, t % per_epoch
    order = _order(n, seed_t, epoch)
    members = tf.gather(files_t, order[g * c:tf.minimum((g + 1) * c, n)])
    group_seed = tf.random.stateless_uniform([], seed=tf.stack([seed_t, t]), minval=0,
                                             maxval=_INT31, dtype=tf.int64)
    ds = tf.data.Dataset.from_tensor_slices(members).interleave(
        records, cycle_length=c, block_length=1, num_parallel_calls=_AUTOTUNE,
        deterministic=True)
    return ds.shuffle(shuffle_buffer, seed=group_seed, reshuffle_each_iteration=False)

  ds = tf.data.Dataset.counter(start=start.group).flat_map(group)
  return ds.skip(start.offset) if start.offset else ds
