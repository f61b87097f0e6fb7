"""The report tokenizer: SentencePiece trained on the TRAIN split's cleaned reports.

(Or a pretrained checkpoint's WordPiece, `--tokenizer=hf:DIR`: `data_pipelines.wordpiece`.
`from_bytes` / `load` open either kind from its stored file.)

Special ids are fixed for every model this project trains (`cgdmer_jax.data.features`):

| id | piece    | use                                                     |
|----|----------|---------------------------------------------------------|
| 0  | `<pad>`  | padding after `report_len`                              |
| 1  | `<unk>`  | characters never seen in the training corpus            |
| 2  | `<s>`    | bos, first id of every non-empty report                 |
| 3  | `</s>`   | eos, last id of every stored report (kept on truncation)|
| 4  | `<mask>` | user-defined symbol for masked report modelling         |

Model: unigram, `character_coverage=1.0` (PTB-XL mixes German, English and Swedish
umlauts), `normalization_rule_name=identity` (the text is already normalised by
`reports.clean_report`, and identity makes `decode(encode(x)) == x`), fixed random seed, so
training on the same corpus gives the same model bytes.

**Too small a corpus for the requested vocabulary: clamped with a warning.** SentencePiece
is asked for a soft limit (`hard_vocab_limit=false`); when the corpus cannot fill
`vocab_size` pieces the model is smaller, a warning says so, and the real size is what
`build_info.json` records (the trainer must take `vocab_size` from there). A corpus too small
to train at all fails with a `ValueError` that says how many reports it had.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable

import numpy as np
import sentencepiece as spm
from absl import logging
from etils import epath

from cgdmer_jax.data import features
from data_pipelines import wordpiece


def train(reports: Iterable[str], vocab_size: int, *, seed: int = 0) -> bytes:
  """Trains a model on `reports` (cleaned, non-empty ones are used).

  Args:
    reports: the train split's cleaned reports.
    vocab_size: requested vocabulary size, special pieces included.
    seed: SentencePiece's sampling seed.

  Returns:
    The serialized model (`tokenizer.model` bytes).

  Raises:
    ValueError: no non-empty report, or SentencePiece cannot train on the corpus.
  """
  corpus = [r for r in reports if r]
  if not corpus:
    raise ValueError("no non-empty report in the train split: cannot train a tokenizer "
                     "(pass --tokenizer=PATH to reuse one)")
  if vocab_size <= features.NUM_SPECIAL:
    raise ValueError(f"vocab_size={vocab_size} leaves no room beside the "
                     f"{features.NUM_SPECIAL} special pieces")
  spm.set_random_generator_seed(seed)
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=model, vocab_size=vocab_size,
        hard_vocab_limit=False, model_type="unigram", character_coverage=1.0,
        normalization_rule_name="identity", pad_id=features.PAD_ID,
        unk_id=features.UNK_ID, bos_id=features.BOS_ID, eos_id=features.EOS_ID,
        user_defined_symbols=[features.MASK_PIECE], input_sentence_size=2_000_000,
        shuffle_input_sentence=True, num_threads=min(16, os.cpu_count() or 1),
        minloglevel=2)
  except RuntimeError as e:
    raise ValueError(f"SentencePiece could not train on {len(corpus)} reports with "
                     f"vocab_size={vocab_size}: {e}") from e
  proto = model.getvalue()
  size = Tokenizer(proto).vocab_size
  if size < vocab_size:
    logging.warning("The train reports (%d) only support %d pieces: vocab_size clamped "
                    "from %d to %d.", len(corpus), size, vocab_size, size)
  return proto


def from_bytes(data: bytes):
  """The tokenizer of stored bytes: `wordpiece.json` (JSON) or a SentencePiece model.

  Returns:
    `Tokenizer` or `wordpiece.WordPiece` (same interface).
  """
  if data[:1] == b"{":
    return wordpiece.WordPiece.from_bytes(data)
  return Tokenizer(data)


def load(path: str | os.PathLike):
  """`from_bytes` of a file (a dataset's, a workdir's or an export's tokenizer), local or a
  URL (`gs://...`, read through epath)."""
  return from_bytes(epath.Path(path).read_bytes())


class Tokenizer:
  """Fixed-length encoding of reports with a SentencePiece model."""

  kind = "sentencepiece"
  file_name = features.TOKENIZER_FILE
  special_ids = {"pad": features.PAD_ID, "unk": features.UNK_ID, "bos": features.BOS_ID,
                 "eos": features.EOS_ID, "mask": features.MASK_ID}
  normal_ids_start = features.NUM_SPECIAL

  def __init__(self, model_proto: bytes):
    self.proto = bytes(model_proto)
    self.sp = spm.SentencePieceProcessor(model_proto=self.proto)
    got = (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id(),
           self.sp.piece_to_id(features.MASK_PIECE))
    want = (features.PAD_ID, features.UNK_ID, features.BOS_ID, features.EOS_ID,
            features.MASK_ID)
    if got != want:
      raise ValueError(f"tokenizer special ids (pad, unk, bos, eos, <mask>) are {got}, "
                       f"this project needs {want}")

  @classmethod
  def from_file(cls, path: str | os.PathLike) -> "Tokenizer":
    """The model stored at `path`, local or a URL (read through epath)."""
    return cls(epath.Path(path).read_bytes())

  @property
  def vocab_size(self) -> int:
    return self.sp.get_piece_size()

  @property
  def name(self) -> str:
    """How errors name this tokenizer."""
    return (f"SentencePiece ({self.vocab_size} pieces, sha256 "
            f"{hashlib.sha256(self.proto).hexdigest()[:12]})")

  @property
  def vocab_sha256(self) -> str | None:
    return None

  def to_bytes(self) -> bytes:
    return self.proto

  def pieces(self, text: str) -> list[str]:
    return self.sp.encode(text, out_type=str)

  def encode(self, text: str, max_len: int) -> tuple[np.ndarray, int]:
    """`[bos] + ids + [eos]`, truncated to `max_len` keeping eos last, padded with pad.

    Args:
      text: a cleaned report.
      max_len: the stored length (>= 2).

    Returns:
      (int64 [max_len] ids, number of ids before padding); an empty text gives all pad, 0.
    """
    out = np.full(max_len, features.PAD_ID, dtype=np.int64)
    if not text:
      return out, 0
    ids = [features.BOS_ID] + self.sp.encode(text) + [features.EOS_ID]
    if len(ids) > max_len:
      ids = ids[:max_len - 1] + [features.EOS_ID]
    out[:len(ids)] = ids
    return out, len(ids)

  def decode(self, ids: Iterable[int]) -> str:
    """The text of stored ids (special ids and padding dropped)."""
    keep = [int(i) for i in ids if int(i) >= features.NUM_SPECIAL or int(i) == features.UNK_ID]
    return self.sp.decode(keep)
