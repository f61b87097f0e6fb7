"""Pretraining on several converted datasets at once, with sampling weights.

`config.data.dir` is the primary dataset: its val split is the validation set, its tokenizer
is the model's, and the record shapes come from it. `config.data.mix` adds training datasets,
`"DIR[:WEIGHT],DIR2[:WEIGHT2]"`, and `config.data.weight` is the primary's weight. Weights are
all given or all omitted; omitted, each dataset is sampled in proportion to its training
split (the same as concatenating them); given, they are normalised to sum to 1.

Every dataset must hold the same record schema (samples per lead, stored report length) and
every dataset with reports the same tokenizer (compared byte for byte): build the others with
`data_pipelines.build --tokenizer=<primary>/<its tokenizer file>` so one vocabulary covers them
all. Datasets without reports (CinC 2020/2021, CPSC, Chapman... converted ECG-only) feed
only the ECG terms: their rows carry `has_report` False, which the masked-report, SigLIP and
report-side disentanglement terms exclude.

**Stream.** Each dataset contributes its own endless stream of serialized records
(`data/stream.py`, seeded by (seed, dataset index)); each record of the mixture comes from the
dataset that a seeded draw picks (blocks of `DRAW_BLOCK` draws, each block from its own
generator); then batches are cut and parsed once. The stream is a pure function of (datasets,
weights, seed, process index and count). `start_step` counts the draws before the step's
first record and starts each dataset's stream at its own position, so a resumed run sees
exactly the batches an uninterrupted one would, without reading what came before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterator
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from etils import epath

from cgdmer_jax.data import reader
from cgdmer_jax.data import shard_scan
from cgdmer_jax.data import stream


@dataclasses.dataclass(frozen=True)
class Source:
  """One training dataset and its sampling weight (None: by size)."""
  data_dir: str
  weight: float | None = None


def sources_of(config) -> list[Source]:
  """The training datasets a config names (primary first).

  Args:
    config: full config (`data.dir`, `data.mix`, `data.weight`).

  Returns:
    One `Source` per dataset.

  Raises:
    ValueError: a malformed `data.mix` entry, a weight <= 0, or weights given for some
      datasets only.
  """
  weight = config.data.weight
  out = [Source(str(config.data.dir), float(weight) if weight else None)]
  for entry in [e.strip() for e in str(config.data.mix or "").split(",") if e.strip()]:
    path, w = entry, None
    head, sep, tail = entry.rpartition(":")
    if sep and head and _is_number(tail):
      path, w = head, float(tail)
    out.append(Source(path, w))
  given = [s.weight is not None for s in out]
  if any(given) and not all(given):
    raise ValueError("config.data.mix: give a weight to every dataset (DIR:WEIGHT, and "
                     "config.data.weight for the primary) or to none (sampled by size); got "
                     + ", ".join(f"{s.data_dir}:{s.weight}" for s in out))
  for s in out:
    if s.weight is not None and not s.weight > 0:
      raise ValueError(f"config.data.mix: weight of {s.data_dir} must be > 0, got {s.weight}")
  return out


def _is_number(text: str) -> bool:
  try:
    float(text)
  except ValueError:
    return False
  return True


def tokenizer_digest(info: reader.DatasetInfo) -> str | None:
  """sha256 of a dataset's tokenizer file, or None when it has no reports."""
  if not info.tokenizer_path:
    return None
  return hashlib.sha256(epath.Path(info.tokenizer_path).read_bytes()).hexdigest()


def check(infos: Sequence[reader.DatasetInfo], split: str) -> None:
  """Raises ValueError where datasets cannot be mixed, naming the two that disagree.

  Args:
    infos: the datasets' metadata, primary first.
    split: the training split every dataset must have.
  """
  first = infos[0]
  primary_tok = tokenizer_digest(first)
  for info in infos:
    if split not in info.shard_files:
      raise ValueError(f"{info.data_dir} has no {split!r} split to train on (it has "
                       f"{sorted(info.shard_files)})")
    for field in ("num_samples", "max_report_len"):
      if getattr(info, field) != getattr(first, field):
        raise ValueError(
            f"cannot mix {first.data_dir} ({field}={getattr(first, field)}) and "
            f"{info.data_dir} ({field}={getattr(info, field)}): rebuild one with the other's "
            "--fs/--seconds/--max_report_len")
    tok = tokenizer_digest(info)
    if tok is not None and primary_tok is None:
      raise ValueError(f"{info.data_dir} has reports but the primary dataset {first.data_dir} "
                       "has none: make a dataset with reports config.data.dir (its tokenizer "
                       "and val split are the run's)")
    if tok is not None and tok != primary_tok:
      raise ValueError(
          f"{info.data_dir} was tokenized with {info.tokenizer_path}, not with the primary "
          f"dataset's {first.tokenizer_path}: rebuild it with "
          f"`data_pipelines.build --tokenizer={first.tokenizer_path}` (one vocabulary for all)")


def weights(sources: Sequence[Source], infos: Sequence[reader.DatasetInfo],
            split: str) -> np.ndarray:
  """Normalised sampling weights: as given, or the training split sizes."""
  if sources[0].weight is None:
    w = np.asarray([info.split_sizes[split] for info in infos], np.float64)
  else:
    w = np.asarray([s.weight for s in sources], np.float64)
  return w / w.sum()


# Dataset draws are made in blocks of this many, each block from its own seeded generator.
DRAW_BLOCK = 4096


def _draw_block(cum_weights: np.ndarray, seed: int, block: int) -> np.ndarray:
  rng = np.random.Generator(np.random.Philox(np.random.SeedSequence([seed, 7_919, block])))
  return np.searchsorted(cum_weights, rng.random(DRAW_BLOCK), side="right").astype(np.int64)


def _cumulative(w: np.ndarray) -> np.ndarray:
  cum = np.cumsum(w)[:-1]  # the last dataset takes what is left, whatever the rounding
  return cum / np.sum(w)


def draws_before(w: np.ndarray, seed: int, position: int) -> np.ndarray:
  """How many of the first `position` records of the mixture each dataset gave.

  The draws are recomputed, not stored: about 0.1 s per 10 M records on one core, the only
  resumption cost that grows with the step (each dataset's stream then resumes by position).
  """
  cum, counts = _cumulative(w), np.zeros(len(w), np.int64)
  full, rest = divmod(int(position), DRAW_BLOCK)
  for b in range(full):
    counts += np.bincount(_draw_block(cum, seed, b), minlength=len(w))
  if rest:
    counts += np.bincount(_draw_block(cum, seed, full)[:rest], minlength=len(w))
  return counts


def _choices(w: np.ndarray, seed: int, start: int) -> tf.data.Dataset:
  """The dataset index of every record of the mixture from record `start` on."""
  cum = _cumulative(w)

  def blocks():
    block, skip = divmod(int(start), DRAW_BLOCK)
    while True:
      yield _draw_block(cum, seed, block)[skip:]
      block, skip = block + 1, 0

  return tf.data.Dataset.from_generator(
      blocks, output_signature=tf.TensorSpec([None], tf.int64)).unbatch()


def train_batches(sources: Sequence[Source], *, split: str = "train", global_batch_size: int,
                  seed: int, start_step: int = 0, shuffle_buffer: int = 10_000,
                  process_index: int | None = None, process_count: int | None = None,
                  cycle_length: int = 16, with_record_id: bool = False,
                  on_corrupt: str = "error", damage_log: shard_scan.DamageLog | None = None
                  ) -> Iterator[dict[str, np.ndarray]]:
  """Endless deterministic batches drawn from several datasets (see the module docstring).

  Args:
    sources: the datasets and weights (`sources_of`), primary first.
    Others: as `reader.train_batches` (`on_corrupt`, `damage_log` for every dataset).

  Returns:
    An iterator of batch dicts (local batch), the schema of `reader.train_batches`.
  """
  infos = [reader.load_info(s.data_dir) for s in sources]
  check(infos, split)
  index, count = reader._process(process_index, process_count)
  local_batch = reader._local_batch(global_batch_size, count)
  if start_step < 0:
    raise ValueError("start_step must be >= 0")
  w = weights(sources, infos, split)
  start = start_step * local_batch
  consumed = draws_before(w, seed, start)  # records each dataset gave before `start`
  streams, local = [], []
  for i, info in enumerate(infos):
    files, lengths = info.shard_files[split], info.shard_lengths[split]
    local.append(reader.local_train_files(info, split, index, count))
    streams.append(stream.serialized(
        local[-1], lengths[index::count], seed=seed + 1_000_003 * i,
        shuffle_buffer=shuffle_buffer, cycle_length=cycle_length,
        records=shard_scan.records_fn(on_corrupt, damage_log, files, lengths),
        start_record=int(consumed[i])))
  ds = tf.data.Dataset.choose_from_datasets(streams, _choices(w, seed, start),
                                            stop_on_empty_dataset=False)
  ds = ds.batch(local_batch, drop_remainder=True)
  parse = reader._parser(infos[0], with_record_id)
  ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.prefetch(tf.data.AUTOTUNE).with_options(reader._options())
  all_local = [f for fs in local for f in fs]
  where = ",".join(s.data_dir for s in sources)
  for batch in shard_scan.named_errors(ds.as_numpy_iterator(), where, all_local):
    if with_record_id:
      batch["record_id"] = reader._strings(batch["record_id"])
    yield batch


def check_config(config, primary: reader.DatasetInfo) -> str:
  """Checks a config's mixture before anything compiles.

  Args:
    config: full config (`data.dir`, `data.mix`, `data.weight`, `data.train_split`).
    primary: the metadata of `data.dir`.

  Returns:
    `describe` of the mixture, for the run's log.

  Raises:
    ValueError, FileNotFoundError: as `sources_of`, `check` and `reader.load_info`.
  """
  sources = sources_of(config)
  check([primary] + [reader.load_info(s.data_dir) for s in sources[1:]],
        config.data.train_split)
  return describe(sources, config.data.train_split)


def describe(sources: Sequence[Source], split: str = "train") -> str:
  """One line per dataset: path, training records, sampling weight (for the run's log)."""
  infos = [reader.load_info(s.data_dir) for s in sources]
  w = weights(sources, infos, split)
  return "; ".join(f"{os.path.basename(os.path.normpath(i.data_dir))}: "
                   f"{i.split_sizes.get(split, 0)} records, weight {x:.3f}"
                   for i, x in zip(infos, w))
