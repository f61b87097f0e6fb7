"""Shared config pieces: the model sizes table, ablation variants and `:k=v` arg parsing.

Configs are code (big_vision style): every experiment file has `get_config(arg)` returning an
`ml_collections.ConfigDict`, and `--config=configs/pretrain.py:size=tiny,variant=full` passes
`"size=tiny,variant=full"` as `arg`.
"""

from __future__ import annotations

import ml_collections

from cgdmer_jax import overrides
from cgdmer_jax.data import features
from cgdmer_jax.models import cgdmer

# One row per size. ecg_* is the modality-specific ECG backbone (pre-norm ViT over lead-patch
# tokens, ST-MEM's lead-wise tokenisation), text_* the report transformer, shared_*/specific_*
# the disentanglement encoders (CG-DMER), dec_* the light MAE-style ECG decoder.
# Parameter counts measured from the model (objective.param_counts) are in docs/MODEL.md.
SIZES = {
    # Tests and the CPU quickstart: about 1M parameters.
    "tiny": dict(ecg_width=64, ecg_depth=3, ecg_heads=4,
                 text_width=64, text_depth=2, text_heads=4,
                 shared_depth=1, specific_depth=1,
                 dec_width=64, dec_depth=1, dec_heads=4,
                 embed_dim=64),
    # CPU studies between tiny and small: tiny's data shape (100 Hz, 0.5 s patches) and
    # schedule defaults, twice the width (about 3M parameters; ~2.5x tiny's step time).
    "mini": dict(ecg_width=128, ecg_depth=4, ecg_heads=4,
                 text_width=128, text_depth=3, text_heads=4,
                 shared_depth=1, specific_depth=1,
                 dec_width=64, dec_depth=1, dec_heads=4,
                 embed_dim=128),
    # ST-MEM small widths (384/12/6) for the ECG backbone.
    "small": dict(ecg_width=384, ecg_depth=12, ecg_heads=6,
                  text_width=384, text_depth=6, text_heads=6,
                  shared_depth=2, specific_depth=2,
                  dec_width=256, dec_depth=4, dec_heads=4,
                  embed_dim=256),
    # ViT-B-like ECG backbone (768/12/12, about 85M parameters), as ST-MEM base.
    "base": dict(ecg_width=768, ecg_depth=12, ecg_heads=12,
                 text_width=768, text_depth=6, text_heads=12,
                 shared_depth=2, specific_depth=2,
                 dec_width=256, dec_depth=4, dec_heads=4,
                 embed_dim=256),
}

# Ablation variants of the paper's ablation table (owned by the model, which builds a branch
# only for the terms a variant switches on).
VARIANTS = cgdmer.VARIANTS

# Sizes with the CPU defaults: 100 Hz data, 0.5 s patches, short schedule, batch 32.
CPU_SIZES = ("tiny", "mini")


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses `"k1=v1,k2=v2"` into a ConfigDict over `defaults` (values typed like the default).

  Args:
    arg: the text after `:` in `--config=path.py:arg`, or None.
    **defaults: every accepted key with its default value.

  Returns:
    A ConfigDict with one entry per default.

  Raises:
    ValueError: on an unknown key or a malformed item.
  """
  out = ml_collections.ConfigDict(dict(defaults))
  for key, value in overrides.parse_items(arg).items():
    if key not in defaults:
      raise ValueError(f"unknown config arg {key!r}; known: {sorted(defaults)}")
    out[key] = overrides.typed(value, defaults[key])
  return out


# Hugging Face BERT-base (bert-base-uncased, MedCPT, Bio_ClinicalBERT): the architecture of
# `text=bert` without a checkpoint; `model.text.init_from=DIR` replaces it by DIR/config.json.
BERT_BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                 num_attention_heads=12, intermediate_size=3072, hidden_act="gelu",
                 max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12,
                 pad_token_id=0)


def text_config(kind: str, vocab_size: int) -> ml_collections.ConfigDict:
  """The `config.model.text` subtree: which report backbone (models/bert_tower.py).

  Args:
    kind: 'transformer' (trained from scratch, `text_*` widths of the size) or 'bert'
      (BERT-family tower; with `init_from=DIR` a local Hugging Face checkpoint).
    vocab_size: vocabulary of a BERT without checkpoint (the dataset's replaces it).

  Returns:
    ConfigDict: kind, init_from, freeze_layers, bert (architecture), mlm_head, vocab_sha256.
  """
  if kind not in ("transformer", "bert"):
    raise ValueError(f"unknown text {kind!r}; known: ['bert', 'transformer']")
  t = ml_collections.ConfigDict()
  t.kind = kind
  # A local Hugging Face checkpoint folder (config.json, model.safetensors, tokenizer).
  t.init_from = ml_collections.config_dict.placeholder(str)
  # Embeddings + the first K blocks stay fixed (MERL: 6 of MedCPT's 12); 0 trains all.
  t.freeze_layers = 0
  t.bert = dict(BERT_BASE, vocab_size=vocab_size)
  # Filled from init_from: its masked-LM head is used; its WordPiece vocabulary's digest.
  t.mlm_head = False
  t.vocab_sha256 = ml_collections.config_dict.placeholder(str)
  return t


def model_config(size: str, *, fs: int, vocab_size: int = 8000,
                 max_report_len: int = 128, text: str = "transformer"
                 ) -> ml_collections.ConfigDict:
  """The `config.model` subtree for a size from `SIZES`.

  Args:
    size: a key of `SIZES`.
    fs: sampling rate of the data; sets the default patch length (0.1 s, the paper's
      50 samples at 500 Hz; 0.5 s for the `CPU_SIZES`: 240 tokens keep the CPU tests and quickstart
      fast, since full-sequence attention cost grows with the square of the token count).
    vocab_size: SentencePiece vocabulary (the trainer checks it against the dataset).
    max_report_len: padded report length (the trainer checks it against the dataset).
    text: report backbone, 'transformer' or 'bert' (`text_config`).

  Returns:
    ConfigDict of the model.
  """
  if size not in SIZES:
    raise ValueError(f"unknown size {size!r}; known: {sorted(SIZES)}")
  m = ml_collections.ConfigDict(dict(SIZES[size]))
  m.size = size
  m.patch_size = fs // 2 if size in CPU_SIZES else fs // 10
  m.num_leads = 12
  m.vocab_size = vocab_size
  m.max_report_len = max_report_len
  m.text = text_config(text, vocab_size)
  if text == "bert":
    m.text_width = BERT_BASE["hidden_size"]  # the checkpoint's, once init_from is resolved
  m.mlp_ratio = 4
  # The exported `probe` feature: 'shared', 'specific' or 'concat'. 'shared': level with
  # 'concat' at 100 % of the labels and better at 1 % on PTB-XL val, at half the width
  # (results/disentangle_design/README.md).
  m.probe_features = "shared"
  # What the generative heads (ECG decoder, masked-report head) get of the shared features:
  # 'full', or 'stop_gradient' (they read shared but do not train it, so what only
  # reconstruction needs must come through the specific branch; docs/MODEL.md).
  m.heads_shared = "full"
  # ST-MEM's patch embedding, LayerNorm(patch) -> Dense -> LayerNorm(token), instead of a bare
  # Dense (docs/RECIPE.md#the-defaults-and-why).
  m.patch_norm = True
  # Needs patch_norm: adds each patch's mean and log std back to its token (models/ecg.py), the
  # amplitude the patch LayerNorm removes: on millivolts, the voltage (docs/RECIPE.md#amplitude).
  m.patch_stats = True
  # Per-patch normalised reconstruction target (MAE / ST-MEM norm_pix_loss).
  m.norm_patch_target = True
  # Compute dtype ('float32' | 'bfloat16'); parameters, norms, softmax and losses stay float32.
  m.dtype = "float32"
  # Attention: 'xla' / 'cudnn' (jax.nn.dot_product_attention), 'einsum' (models/layers.py:
  # same math, hand-written backward; faster on CPU) or 'auto' (cuDNN flash attention on GPU
  # with bfloat16, 'einsum' on CPU, 'xla' otherwise).
  m.attention = "auto"
  # Width of the modality-shared encoder; 0 = ecg_width. A tower of another width enters it
  # through its own linear adapter.
  m.shared_width = 0
  # Layers under lax.scan (one compiled block per stack) and optional rematerialisation.
  m.scan_layers = True
  m.remat = False
  # Run the batch in this many sequential chunks inside the step, forward + backward per chunk
  # (cgdmer_jax/train/accumulate.py; multiplies optim.grad_accum_steps, the same mechanism): same
  # loss and gradients, 1/n of the activation memory, and on CPU better cache use
  # (docs/PERFORMANCE.md). Only for per-example losses (ecg_mask_only, or masked-token terms
  # without SigLIP and disentanglement); 1 = off.
  m.batch_chunks = 1
  # SigLIP initial temperature (log) and bias, from the SigLIP paper: t'=log 10, b=-10.
  m.siglip_init_log_temp = 2.302585
  m.siglip_init_bias = -10.0
  # The report tokenizer's special ids and first ordinary id: SentencePiece's (data/features.py)
  # until the trainer copies the dataset's (a WordPiece checkpoint's) from its build_info.
  m.special_ids = dict(pad=features.PAD_ID, unk=features.UNK_ID, bos=features.BOS_ID,
                       eos=features.EOS_ID, mask=features.MASK_ID)
  m.normal_ids_start = features.NUM_SPECIAL
  return m
