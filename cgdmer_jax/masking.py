"""Mask sampling: spatial-temporal ECG token masks and BERT-style report masks.

Counts are Python ints computed from the config, so every mask has a static shape and the
jitted step never recompiles. ECG tokens sit on a (lead x time patch) grid flattened as
`n = lead * num_time_patches + t` (`models.patching`, the order `patchify` produces).

ECG masking (CG-DMER's spatial-temporal masking; counts as in `configs/pretrain.py`):
  1. spatial: `leads_hidden = round(lead_ratio * 12)` whole leads are hidden;
  2. temporal: `times_hidden = round(time_ratio * num_time_patches)` time patches are hidden in
     every lead;
  3. random: `round(token_ratio * R)` of the R tokens left by 1 and 2 are hidden (MAE).
Every record of the batch draws its own leads, times and tokens. Each hidden token carries the
step that hid it (`MASK_KINDS`; a token in a hidden lead at a hidden time counts as `time`),
so the reconstruction error can be read per kind (`losses.total`'s `ecg_mse/<kind>`).
"""

from __future__ import annotations

import collections
import functools
import math

import jax
import jax.numpy as jnp
import ml_collections

from cgdmer_jax.models import patching

# `masked_kind` values: the random step, a whole hidden lead, a time patch hidden in every lead.
MASK_KINDS = ("random", "lead", "time")

EcgMaskCounts = collections.namedtuple(
    "EcgMaskCounts",
    ["num_tokens", "num_visible", "num_masked", "leads_hidden", "times_hidden",
     "tokens_hidden"])


def ecg_mask_counts(config: ml_collections.ConfigDict) -> EcgMaskCounts:
  """The static token counts of the ECG mask.

  Args:
    config: full config (`data.fs/seconds`, `model.patch_size/num_leads`, `mask.*`).

  Returns:
    EcgMaskCounts; with `config.mask.ecg` False nothing is hidden (V = N, M = 0).
  """
  C, Tp = config.model.num_leads, patching.num_time_patches(config)
  N = C * Tp
  if not config.mask.ecg:
    return EcgMaskCounts(N, N, 0, 0, 0, 0)
  leads_hidden = int(round(config.mask.lead_ratio * C))
  times_hidden = int(round(config.mask.time_ratio * Tp))
  if leads_hidden >= C or times_hidden >= Tp:
    raise ValueError(f"mask.lead_ratio={config.mask.lead_ratio} / time_ratio="
                     f"{config.mask.time_ratio} hide every lead or every time patch")
  rest = (C - leads_hidden) * (Tp - times_hidden)
  tokens_hidden = int(round(config.mask.token_ratio * rest))
  num_visible = rest - tokens_hidden
  if num_visible < 1:
    raise ValueError("the ECG mask hides every token; lower mask.token_ratio")
  return EcgMaskCounts(N, num_visible, N - num_visible, leads_hidden, times_hidden,
                       tokens_hidden)


def sample_ecg_mask(rng: jax.Array, batch_size: int,
                    config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """Samples one spatial-temporal token mask per record.

  Args:
    rng: PRNG key.
    batch_size: B (static).
    config: full config.

  Returns:
    dict with `keep_idx_BxV` int32 (visible token indices, ascending), `masked_idx_BxM`
    int32 (hidden token indices, ascending), `masked_kind_BxM` int32 (the index in
    `MASK_KINDS` of the step that hid each of them) and `mask_BxN` bool (True = hidden).
    Keys are named without the shape suffix: `keep_idx`, `masked_idx`, `masked_kind`, `mask`.
  """
  c = ecg_mask_counts(config)
  C, Tp, B = config.model.num_leads, patching.num_time_patches(config), batch_size
  if c.num_masked == 0:
    keep_BxV = jnp.broadcast_to(jnp.arange(c.num_tokens, dtype=jnp.int32), (B, c.num_tokens))
    return dict(keep_idx=keep_BxV, masked_idx=jnp.zeros((B, 0), jnp.int32),
                masked_kind=jnp.zeros((B, 0), jnp.int32),
                mask=jnp.zeros((B, c.num_tokens), bool))
  k_lead, k_time, k_tok = jax.random.split(rng, 3)
  # The first `leads_hidden` leads of a random permutation are hidden, and likewise for time.
  lead_rank_BxC = jnp.argsort(jax.random.uniform(k_lead, (B, C)), axis=1).argsort(axis=1)
  time_rank_BxT = jnp.argsort(jax.random.uniform(k_time, (B, Tp)), axis=1).argsort(axis=1)
  lead_BxCx1 = (lead_rank_BxC < c.leads_hidden)[:, :, None]
  time_Bx1xT = (time_rank_BxT < c.times_hidden)[:, None, :]
  struct_BxN = (lead_BxCx1 | time_Bx1xT).reshape(B, C * Tp)
  kind_BxN = jnp.where(time_Bx1xT, 2, jnp.where(lead_BxCx1, 1, 0)).reshape(B, C * Tp)
  # Sort key: tokens not hidden by lead/time get a uniform score in [0, 1), the others
  # 2 + score, so the V smallest are exactly a uniform random subset of the remaining tokens.
  score_BxN = jax.random.uniform(k_tok, (B, C * Tp)) + 2.0 * struct_BxN
  order_BxN = jnp.argsort(score_BxN, axis=1).astype(jnp.int32)
  keep_BxV = jnp.sort(order_BxN[:, :c.num_visible], axis=1)
  masked_BxM = jnp.sort(order_BxN[:, c.num_visible:], axis=1)
  mask_BxN = jnp.ones((B, C * Tp), bool).at[jnp.arange(B)[:, None], keep_BxV].set(False)
  kind_BxM = jnp.take_along_axis(kind_BxN, masked_BxM, axis=1).astype(jnp.int32)
  return dict(keep_idx=keep_BxV, masked_idx=masked_BxM, masked_kind=kind_BxM, mask=mask_BxN)


def num_text_slots(config: ml_collections.ConfigDict) -> int:
  """K, the static number of masked-token slots per report: `ceil(text_ratio * L)`, 0 when off."""
  if not config.mask.text:
    return 0
  return int(math.ceil(config.mask.text_ratio * config.model.max_report_len))


def text_special_ids(config: ml_collections.ConfigDict) -> tuple[dict[str, int], int]:
  """(special ids by role, first non-special id) of the dataset's tokenizer.

  `model.special_ids` / `model.normal_ids_start` are copied from the dataset's build_info by
  the trainer (configs/ start from the project's SentencePiece ids).
  """
  ids = config.model.special_ids
  return {k: int(v) for k, v in dict(ids).items()}, int(config.model.normal_ids_start)


def sample_text_mask(rng: jax.Array, report_ids_BxL: jax.Array, report_len_B: jax.Array,
                     config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """BERT-style masking of the real tokens of each report (Devlin et al. 2019).

  Candidates are the ids before `report_len` that are none of the tokenizer's special ids
  (PAD/UNK/BOS/EOS/MASK: SentencePiece's 0..4, or a WordPiece checkpoint's, `text_special_ids`).
  Each report selects `ceil(text_ratio * n_candidates)` of them (<= K since n <= L); a
  selected token becomes MASK with probability 0.8, a random non-special id with 0.1, and
  stays itself with 0.1 (random ids are drawn from [first non-special id, vocab)). Unused
  slots of the K have weight 0 (and target PAD).

  Args:
    rng: PRNG key.
    report_ids_BxL: int ids, BOS ... EOS then PAD.
    report_len_B: int ids before padding (0 for no report).
    config: full config (`mask.text/text_ratio`, `model.vocab_size/max_report_len`).

  Returns:
    dict with `input_ids` [B, L] int32 (the corrupted ids fed to the text tower),
    `positions` [B, K] int32, `targets` [B, K] int32 (the original ids there) and `weights`
    [B, K] float32 (1 for a selected token, 0 for an unused slot).
  """
  ids_BxL = jnp.asarray(report_ids_BxL, jnp.int32)
  B, L = ids_BxL.shape
  K = num_text_slots(config)
  if K == 0:
    return dict(input_ids=ids_BxL, positions=jnp.zeros((B, 0), jnp.int32),
                targets=jnp.zeros((B, 0), jnp.int32), weights=jnp.zeros((B, 0), jnp.float32))
  special, normal_start = text_special_ids(config)
  k_pick, k_kind, k_rand = jax.random.split(rng, 3)
  is_special_BxL = functools.reduce(jnp.logical_or, [ids_BxL == i for i in special.values()])
  cand_BxL = (~is_special_BxL
              & (jnp.arange(L)[None, :] < report_len_B.astype(jnp.int32)[:, None]))
  n_cand_B = jnp.sum(cand_BxL, axis=1)
  # The small epsilon keeps ratio * n from rounding up past an exact integer in float32.
  n_pick_B = jnp.ceil(config.mask.text_ratio * n_cand_B - 1e-4).astype(jnp.int32)
  score_BxL = jax.random.uniform(k_pick, (B, L)) + 2.0 * (~cand_BxL)
  pos_BxK = jnp.argsort(score_BxL, axis=1)[:, :K].astype(jnp.int32)
  used_BxK = jnp.arange(K)[None, :] < n_pick_B[:, None]
  orig_BxK = jnp.take_along_axis(ids_BxL, pos_BxK, axis=1)
  u_BxK = jax.random.uniform(k_kind, (B, K))
  random_BxK = jax.random.randint(k_rand, (B, K), normal_start,
                                  config.model.vocab_size, dtype=jnp.int32)
  new_BxK = jnp.where(u_BxK < 0.8, special["mask"],
                      jnp.where(u_BxK < 0.9, random_BxK, orig_BxK))
  new_BxK = jnp.where(used_BxK, new_BxK, orig_BxK)  # unused slots write back the original
  input_BxL = ids_BxL.at[jnp.arange(B)[:, None], pos_BxK].set(new_BxK)
  return dict(input_ids=input_BxL, positions=pos_BxK,
              targets=jnp.where(used_BxK, orig_BxK, special["pad"]),
              weights=used_BxK.astype(jnp.float32))


def sample_masks(rng: jax.Array, batch: dict, config: ml_collections.ConfigDict
                 ) -> dict[str, dict[str, jax.Array]]:
  """Both masks of a batch, from independent streams `fold_in(rng, 0)` (ECG), `(rng, 1)` (text).

  Args:
    rng: PRNG key of the step.
    batch: the batch dict (`ecg`, `report_ids`, `report_len`).
    config: full config.

  Returns:
    dict(ecg=sample_ecg_mask(...), text=sample_text_mask(...)).
  """
  B = batch["ecg"].shape[0]
  return dict(
      ecg=sample_ecg_mask(jax.random.fold_in(rng, 0), B, config),
      text=sample_text_mask(jax.random.fold_in(rng, 1), batch["report_ids"],
                            batch["report_len"], config))
