"""The fine-tuning settings and their defaults: the one place they live (the command's flags
take their defaults from here).

The defaults are sized for the CPU and the tiny model: one pretrained fine-tune of
`ptbxl_super` at 100 % of the labels (2 589 train records, 1 000-sample 100 Hz ECGs) takes
about five minutes on two cores. The recipe is BEiT/MAE fine-tuning's, scaled down: AdamW
(weight decay 0.05 on weight matrices), layer-wise learning-rate decay 0.75, one warmup epoch
then cosine decay over `epochs`, early stopping on the selection macro AUC.

Measured (2026-12-04, tiny model after 50 quickstart steps, `--split=val`, selection on the
held-out 10 % of train, 4 epochs): peak lr 3e-3 reached a selection AUC of 0.757 (val 74.4),
1e-3 reached 0.705 (val 71.7); both still rising at epoch 4. Larger sizes were not measured:
start lower there (BEiT's and MAE's peak rates at batch 64 are a few 1e-4).
"""

from __future__ import annotations

import dataclasses

FEATURES = ("shared", "concat")
# `--split=val`, or no readable val rows: early stopping selects on this seeded share of the
# training subset, held out of training (never on the reported split).
HOLDOUT_FRACTION = 0.1
# Fewer held-out rows than this select on noise (1 % of PTB-XL: 3 rows): the cell then trains
# on every row for the fixed budget of `epochs` and is scored after the last one.
MIN_HOLDOUT_ROWS = 50


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
  """How one (model, task, label fraction) cell is fine-tuned.

  Attributes:
    features: the pooled `encode_ecg` output the head reads: 'shared', or 'concat'
      (shared and specific side by side).
    epochs: most epochs (the cosine schedule's length); early stopping may end sooner.
    patience: epochs without a better selection AUC before stopping.
    batch_size: ECGs per optimizer step (rounded up to a multiple of the device count; the
      padding rows have zero weight).
    lr: peak learning rate of the head and the post-backbone parts.
    layer_decay: BEiT's layer-wise decay: block i of a depth-d backbone learns at
      lr * decay^(d - i), the patch/lead embeddings at lr * decay^(d + 1); 1 = uniform.
    weight_decay: AdamW's decoupled decay of weight matrices (not of norms, biases,
      embeddings).
    warmup_epochs: linear warmup from 0, in epochs (fractions allowed).
    freeze_blocks: 0 trains every weight; N > 0 freezes the patch embedding and the first N
      backbone blocks.
    seed: head init, data order and the held-out selection rows.
    min_steps_per_epoch: an epoch over fewer training rows than this many batches repeats
      them (reshuffled each pass) up to this many steps, so small label fractions (1 %: 26
      PTB-XL rows, less than one batch) still get a schedule worth the name.
  """
  features: str = "shared"
  epochs: int = 4
  patience: int = 2
  batch_size: int = 64
  lr: float = 3e-3
  layer_decay: float = 0.75
  weight_decay: float = 0.05
  warmup_epochs: float = 1.0
  freeze_blocks: int = 0
  seed: int = 0
  min_steps_per_epoch: int = 10

  def check(self) -> "FinetuneConfig":
    """Raises ValueError on a setting out of range; returns self."""
    if self.features not in FEATURES:
      raise ValueError(f"unknown --features {self.features!r}; known: {', '.join(FEATURES)}")
    for name in ("epochs", "patience", "batch_size", "min_steps_per_epoch"):
      if getattr(self, name) < 1:
        raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
    if not self.lr > 0:
      raise ValueError(f"--lr must be > 0, got {self.lr}")
    if not 0 < self.layer_decay <= 1:
      raise ValueError(f"--layer_decay must be in (0, 1], got {self.layer_decay}")
    if self.weight_decay < 0 or self.warmup_epochs < 0 or self.freeze_blocks < 0:
      raise ValueError("--weight_decay, --warmup_epochs and --freeze_blocks must be >= 0")
    return self
