"""The WordPiece tokenizer of a pretrained BERT-family checkpoint (`--tokenizer=hf:DIR`).

The checkpoint folder's own tokenizer, through the `tokenizers` library: `tokenizer.json`
when the folder has one (the fast tokenizer, normaliser included), else `vocab.txt` with
BERT's normaliser and pre-tokeniser (`do_lower_case` from `tokenizer_config.json`, default
True as in HF's BertTokenizer). Special tokens are the checkpoint's (`special_tokens_map.json`
/ `tokenizer_config.json`, default `[CLS] [SEP] [PAD] [MASK] [UNK]`) and so are their ids:
a report is stored as `[CLS] pieces [SEP]` then `[PAD]`, truncated keeping `[SEP]`, the
layout BERT was pretrained on. Roles map onto the project's names: bos = CLS, eos = SEP.

A dataset and an export keep one self-contained file, `wordpiece.json`: the serialized
`tokenizers` tokenizer, the special tokens, where it came from and `vocab_sha256` (digest of
the token -> id table), which names the vocabulary in mismatch errors.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections.abc import Iterable

import numpy as np

from cgdmer_jax.data import features

# `tokenizers` is imported inside the functions that use it: the trainer imports this module
# (train/pretrained_text.py), and so the step benchmark and the GPU check, which run on a machine
# without `tokenizers`.

FILE = features.WORDPIECE_FILE
FORMAT = "cgdmer-wordpiece-1"
PREFIX = "hf:"
ROLES = ("pad", "unk", "bos", "eos", "mask")
# HF names of the special tokens of each role and BERT's defaults.
_HF_KEYS = dict(pad="pad_token", unk="unk_token", bos="cls_token", eos="sep_token",
                mask="mask_token")
_DEFAULTS = dict(pad="[PAD]", unk="[UNK]", bos="[CLS]", eos="[SEP]", mask="[MASK]")


def _read_json(path: pathlib.Path) -> dict:
  if not path.is_file():
    return {}
  d = json.loads(path.read_text(encoding="utf-8"))
  if not isinstance(d, dict):
    raise ValueError(f"{path} is not a JSON object")
  return d


def _token_text(v) -> str | None:
  # special_tokens_map.json holds plain strings or AddedToken dicts ({"content": ...}).
  if isinstance(v, dict):
    return v.get("content")
  return v if isinstance(v, str) else None


def vocab_sha256(tok) -> str:
  """Digest of a `tokenizers.Tokenizer`'s token -> id table (with added tokens)."""
  items = sorted(tok.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
  return hashlib.sha256("\n".join(f"{i}\t{t}" for t, i in items).encode("utf-8")).hexdigest()


def from_folder(folder: str | os.PathLike) -> "WordPiece":
  """The tokenizer of a Hugging Face checkpoint folder.

  Args:
    folder: holds `tokenizer.json` or `vocab.txt` (and optionally `tokenizer_config.json`,
      `special_tokens_map.json`).

  Returns:
    WordPiece.

  Raises:
    FileNotFoundError: no tokenizer file in the folder.
    ValueError: a special token missing from the vocabulary.
  """
  import tokenizers
  d = pathlib.Path(folder)
  cfg = _read_json(d / "tokenizer_config.json")
  smap = _read_json(d / "special_tokens_map.json")
  if (d / "tokenizer.json").is_file():
    tok = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
  elif (d / "vocab.txt").is_file():
    from tokenizers import implementations
    lower = bool(cfg.get("do_lower_case", True))
    tok = implementations.BertWordPieceTokenizer(
        str(d / "vocab.txt"), lowercase=lower, strip_accents=cfg.get("strip_accents"),
        clean_text=True, handle_chinese_chars=bool(cfg.get("tokenize_chinese_chars", True)),
        unk_token=_token_text(smap.get("unk_token", cfg.get("unk_token"))) or "[UNK]",
    )._tokenizer
  else:
    raise FileNotFoundError(f"{d} has neither tokenizer.json nor vocab.txt")
  specials = {}
  for role in ROLES:
    key = _HF_KEYS[role]
    specials[role] = _token_text(smap.get(key, cfg.get(key))) or _DEFAULTS[role]
  return WordPiece(tok.to_str(), specials, source=f"{PREFIX}{d.resolve().name}")


class WordPiece:
  """Fixed-length encoding of reports with a checkpoint's WordPiece tokenizer.

  Same interface as `data_pipelines.tokenizer.Tokenizer` (encode / decode / pieces /
  vocab_size / special_ids / to_bytes).
  """

  kind = "wordpiece"
  file_name = FILE

  def __init__(self, tokenizer_json: str, specials: dict[str, str], *, source: str):
    import tokenizers
    self.tokenizer_json = tokenizer_json
    self.specials = dict(specials)
    self.source = source
    self.tok = tokenizers.Tokenizer.from_str(tokenizer_json)
    # The stored length is ours to decide: drop any padding/truncation the file configures.
    self.tok.no_padding()
    self.tok.no_truncation()
    ids = {}
    for role in ROLES:
      i = self.tok.token_to_id(self.specials[role])
      if i is None:
        raise ValueError(f"{source}: special token {self.specials[role]!r} ({role}) is not in "
                         "the vocabulary")
      ids[role] = int(i)
    self.special_ids = ids
    self.vocab_sha256 = vocab_sha256(self.tok)

  @classmethod
  def from_bytes(cls, data: bytes) -> "WordPiece":
    d = json.loads(data.decode("utf-8"))
    if d.get("format") != FORMAT:
      raise ValueError(f"not a {FILE} file (format {d.get('format')!r})")
    return cls(d["tokenizer"], d["specials"], source=d["source"])

  def to_bytes(self) -> bytes:
    """The self-contained `wordpiece.json` bytes (deterministic)."""
    return json.dumps(dict(format=FORMAT, source=self.source, specials=self.specials,
                           vocab_sha256=self.vocab_sha256, tokenizer=self.tokenizer_json),
                      sort_keys=True, indent=1).encode("utf-8")

  @property
  def name(self) -> str:
    """How errors name this tokenizer."""
    return (f"WordPiece {self.source} ({self.vocab_size} tokens, vocab_sha256 "
            f"{self.vocab_sha256[:12]})")

  @property
  def vocab_size(self) -> int:
    return int(self.tok.get_vocab_size(with_added_tokens=True))

  @property
  def normal_ids_start(self) -> int:
    """Smallest id above every special id: random replacement ids of text masking start here."""
    return max(self.special_ids.values()) + 1

  def pieces(self, text: str) -> list[str]:
    return self.tok.encode(text, add_special_tokens=False).tokens

  def encode(self, text: str, max_len: int) -> tuple[np.ndarray, int]:
    """`[CLS] + ids + [SEP]`, truncated to `max_len` keeping SEP last, padded with PAD.

    Args:
      text: a cleaned report.
      max_len: the stored length (>= 2).

    Returns:
      (int64 [max_len] ids, number of ids before padding); an empty text gives all PAD, 0.
    """
    s = self.special_ids
    out = np.full(max_len, s["pad"], dtype=np.int64)
    if not text:
      return out, 0
    ids = [s["bos"]] + self.tok.encode(text, add_special_tokens=False).ids + [s["eos"]]
    if len(ids) > max_len:
      ids = ids[:max_len - 1] + [s["eos"]]
    out[:len(ids)] = ids
    return out, len(ids)

  def decode(self, ids: Iterable[int]) -> str:
    """The text of stored ids (special ids and padding dropped; UNK kept)."""
    drop = {v for k, v in self.special_ids.items() if k != "unk"}
    return self.tok.decode([int(i) for i in ids if int(i) not in drop],
                           skip_special_tokens=False)
