"""A small Hugging Face BERT checkpoint folder made inside the tests (no binary committed).

The layout of a hub download (`config.json`, `model.safetensors`, `vocab.txt`,
`tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`), written by the real
tools: a WordPiece vocabulary of the embedded PTB-XL reports (cleaned as the converter cleans
them) opened and saved by `tokenizers`, and the weights are a random `BertForMaskedLM` saved
by `transformers` with `save_pretrained(safe_serialization=True)`. The special tokens sit
where BERT's do, not at 0..4, so a test that mixed them up with SentencePiece's ids fails:
[PAD]=0, [UNK]=3, [CLS]=4, [SEP]=5, [MASK]=6.
"""

from __future__ import annotations

import collections
import json
import pathlib

from tokenizers import implementations
from tokenizers import normalizers
from tokenizers import pre_tokenizers

from data_pipelines import reports
from data_pipelines import sources

# torch and transformers are optional test references (the `test` extra): imported inside
# `make_checkpoint`, the only function that needs them.

SPECIALS = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SPECIAL_IDS = dict(pad=0, unk=3, bos=4, eos=5, mask=6)


def embedded_reports(ptbxl_root: pathlib.Path) -> list[str]:
  """The cleaned, non-empty reports of the embedded PTB-XL subset."""
  refs = sources.get_source("ptbxl", str(ptbxl_root)).list_records()
  return [c for c in (reports.clean_report(r.report) for r in refs) if c]


def wordpiece_vocab(texts: list[str], vocab_size: int) -> list[str]:
  """A deterministic WordPiece vocabulary: specials, every character (also as a `##`
  continuation, so any word can be tokenised) and the most frequent words (ties by text).

  (The `tokenizers` WordPiece trainer breaks ties in an order that changes between runs.)
  """
  norm = normalizers.BertNormalizer(lowercase=True)
  pre = pre_tokenizers.BertPreTokenizer()
  words = collections.Counter(
      w for t in texts for w, _ in pre.pre_tokenize_str(norm.normalize_str(t)))
  chars = sorted({c for w in words for c in w})
  vocab = SPECIALS + chars + ["##" + c for c in chars]
  for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])):
    if len(vocab) >= vocab_size:
      break
    if w not in vocab:
      vocab.append(w)
  return vocab


def make_checkpoint(out: pathlib.Path, ptbxl_root: pathlib.Path, *, vocab_size: int = 400,
                    hidden: int = 32, layers: int = 2, heads: int = 4,
                    max_positions: int = 128, seed: int = 0) -> pathlib.Path:
  """Writes the checkpoint folder `out` and returns it."""
  import torch
  import transformers

  out.mkdir(parents=True, exist_ok=True)
  (out / "vocab.txt").write_text("\n".join(wordpiece_vocab(
      embedded_reports(ptbxl_root), vocab_size)) + "\n", encoding="utf-8")
  # Opened from vocab.txt, as HF's BertTokenizerFast is: BERT's normaliser, pre-tokeniser and
  # [CLS] ... [SEP] post-processor, saved as a downloaded tokenizer.json.
  wp = implementations.BertWordPieceTokenizer(str(out / "vocab.txt"), lowercase=True)
  wp.save(str(out / "tokenizer.json"))
  (out / "special_tokens_map.json").write_text(json.dumps(dict(
      unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
      mask_token="[MASK]")))
  (out / "tokenizer_config.json").write_text(json.dumps(dict(
      do_lower_case=True, tokenizer_class="BertTokenizer", model_max_length=max_positions)))
  torch.manual_seed(seed)
  config = transformers.BertConfig(
      vocab_size=wp.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers,
      num_attention_heads=heads, intermediate_size=2 * hidden,
      max_position_embeddings=max_positions, pad_token_id=SPECIAL_IDS["pad"])
  transformers.BertForMaskedLM(config).eval().save_pretrained(out, safe_serialization=True)
  return out
