"""The pretraining losses, each a pure function, and their weighted total.

All losses are computed in float32 on the full (global) batch. Under `jax.jit` with the batch
sharded on the `data` mesh axis XLA inserts the collectives itself (e.g. the [B, B] SigLIP
logits need every device's embeddings), so the code is the same on 1 or 512 devices. For
global batches where the gathered logits do not fit, `config.loss.siglip_impl='chunked'`
computes SigLIP block by block around a device ring (`siglip.py` owns both forms).

`term_weights` is the one definition of what the per-example terms are averaged over; exact
gradient accumulation (`accumulate.py`) sums it over the whole batch before any chunk runs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from cgdmer_jax import masking
from cgdmer_jax import siglip as siglip_lib


def _weighted_mean(x_BxK: jax.Array, w_BxK: jax.Array) -> jax.Array:
  w_BxK = w_BxK.astype(jnp.float32)
  return jnp.sum(x_BxK * w_BxK) / jnp.maximum(jnp.sum(w_BxK), 1.0)


def masked_patch_mse(pred_BxMxP: jax.Array, target_BxMxP: jax.Array,
                     weight_BxM: jax.Array) -> jax.Array:
  """MAE reconstruction loss: per-patch MSE averaged over the weighted hidden patches.

  Args:
    pred_BxMxP: predicted hidden patches.
    target_BxMxP: target patches.
    weight_BxM: 1 for a patch that counts (0 for one of a missing lead or entirely in the
      zero padding, and for batch padding rows).

  Returns:
    float32 scalar.
  """
  return _weighted_mean(patch_mse(pred_BxMxP, target_BxMxP), weight_BxM)


def patch_mse(pred_BxMxP: jax.Array, target_BxMxP: jax.Array) -> jax.Array:
  """Per-patch MSE [B, M], float32."""
  err = pred_BxMxP.astype(jnp.float32) - target_BxMxP.astype(jnp.float32)
  return jnp.mean(err * err, axis=-1)


def mse_by_mask_kind(pred_BxMxP: jax.Array, target_BxMxP: jax.Array, weight_BxM: jax.Array,
                     kind_BxM: jax.Array) -> dict[str, jax.Array]:
  """The masked-patch MSE of each masking step: {'ecg_mse/<kind>': scalar} (`MASK_KINDS`).

  Each is the weighted mean over the patches that step hid (0 where it hid none), so the
  reconstruction error of a time patch hidden in every lead can be told from that of a
  patch whose neighbours in time or lead are visible.
  """
  mse_BxM = patch_mse(pred_BxMxP, target_BxMxP)
  return {f"ecg_mse/{name}": _weighted_mean(mse_BxM, weight_BxM * (kind_BxM == i))
          for i, name in enumerate(masking.MASK_KINDS)}


def masked_token_ce(logits_BxKxV: jax.Array, targets_BxK: jax.Array,
                    weights_BxK: jax.Array) -> jax.Array:
  """Cross-entropy of the masked report tokens, averaged over the used slots.

  Args:
    logits_BxKxV: logits at the masked positions.
    targets_BxK: original ids there.
    weights_BxK: 1 for a used slot, 0 otherwise.

  Returns:
    float32 scalar.
  """
  logp_BxKxV = jax.nn.log_softmax(logits_BxKxV.astype(jnp.float32), axis=-1)
  nll_BxK = -jnp.take_along_axis(logp_BxKxV, targets_BxK[..., None].astype(jnp.int32),
                                 axis=-1)[..., 0]
  return _weighted_mean(nll_BxK, weights_BxK)


def disentangle_loss(shared_BxS: jax.Array, specific_BxP: jax.Array,
                     valid_B: jax.Array | None = None) -> jax.Array:
  """Difference (soft orthogonality) loss of Domain Separation Networks (Bousmalis et al. 2016).

  DSN penalises ||Hsᵀ Hp||_F². Here, so the value does not depend on feature scale, batch
  size or width: every feature column of S and of P is centred over the valid rows and
  L2-normalised over them (so (Sᵀ P)_kl is the Pearson correlation of shared feature k and
  specific feature l across the batch), and the squared Frobenius norm is divided by
  S_dim * P_dim: loss = mean_kl corr(s_k, p_l)² in [0, 1]; 0 iff every shared feature is
  uncorrelated with every specific one, 1 for identical rank-1 features.

  Args:
    shared_BxS: pooled shared features.
    specific_BxP: pooled specific features of the same modality.
    valid_B: bool rows to use (e.g. records with a report); None = all.

  Returns:
    float32 scalar.
  """
  B = shared_BxS.shape[0]
  w_Bx1 = (jnp.ones((B,), jnp.float32) if valid_B is None
           else valid_B.astype(jnp.float32))[:, None]
  n = jnp.maximum(jnp.sum(w_Bx1), 1.0)

  def centre_normalise(x_BxF):
    x_BxF = x_BxF.astype(jnp.float32)
    x_BxF = (x_BxF - jnp.sum(x_BxF * w_Bx1, 0, keepdims=True) / n) * w_Bx1
    return x_BxF * jax.lax.rsqrt(jnp.sum(x_BxF * x_BxF, 0, keepdims=True) + 1e-12)

  corr_SxP = centre_normalise(shared_BxS).T @ centre_normalise(specific_BxP)
  return jnp.mean(corr_SxP * corr_SxP)


DISENTANGLE_ESTIMATORS = ("pearson", "cka")


def disentangle_term(outputs: dict, row_ok_B: jax.Array, text_ok_B: jax.Array,
                     estimator: str, cross: bool) -> jax.Array:
  """The disentanglement term: how much each specific space shares with the shared spaces.

  Within each modality, shared vs specific (the report's on rows with a report); with
  `cross`, also across the pair: ECG-specific vs report-shared and report-specific vs
  ECG-shared, so a specific space is pushed away from what the other modality carries.

  Args:
    outputs: `CGDMER.__call__` output (`ecg/shared`, `ecg/specific`, and the report's when
      the report tower runs).
    row_ok_B: rows that count (batch padding excluded).
    text_ok_B: rows with a report.
    estimator: 'pearson' (`disentangle_loss`, DSN's soft orthogonality; its value for
      independent features is 1/(n-1), so at batch 32 it cannot see redundancy) or 'cka'
      (`debiased_cka` clipped at 0: about 0 for independent features at any batch size).
    cross: add the cross-modal pairs.

  Returns:
    float32 scalar: the sum over the pairs.
  """
  if estimator not in DISENTANGLE_ESTIMATORS:
    raise ValueError(f"unknown loss.disentangle_estimator {estimator!r}; "
                     f"known: {DISENTANGLE_ESTIMATORS}")
  pairs = [("ecg/shared", "ecg/specific", row_ok_B)]
  if "text/shared" in outputs:
    pairs.append(("text/shared", "text/specific", text_ok_B))
    if cross:
      pairs += [("text/shared", "ecg/specific", text_ok_B),
                ("ecg/shared", "text/specific", text_ok_B)]
  if estimator == "pearson":
    return sum(disentangle_loss(outputs[a], outputs[b], ok) for a, b, ok in pairs)
  # Each feature set's Gram matrix and self-HSIC once per row set, however many pairs use it.
  grams: dict[tuple[str, int], tuple[jax.Array, jax.Array, jax.Array]] = {}

  def gram(key: str, ok: jax.Array):
    if (key, id(ok)) not in grams:
      w_B = _row_weights(outputs[key], ok)
      k_BxB, n = _centred_gram(outputs[key], w_B), jnp.sum(w_B)
      grams[key, id(ok)] = (k_BxB, n, hsic_unbiased(k_BxB, k_BxB, n))
    return grams[key, id(ok)]
  total_cka = jnp.zeros((), jnp.float32)
  for a, b, ok in pairs:
    (k_BxB, n, kk), (l_BxB, _, ll) = gram(a, ok), gram(b, ok)
    total_cka += jnp.maximum(_cka(hsic_unbiased(k_BxB, l_BxB, n), kk, ll), 0.0)
  return total_cka


TERMS = ("ecg", "text", "contrastive", "disentangle")


def term_scales(config: ml_collections.ConfigDict, step: jax.Array | None = None,
                balance: dict[str, jax.Array] | None = None) -> dict[str, jax.Array | float]:
  """The weight of each term at `step`: `loss.<term>` times its ramp-in (times `balance`).

  A term's weight is 0 before `loss.ramp_start.<term>`, then rises linearly to `loss.<term>`
  over `loss.ramp_steps.<term>` steps (0: at once). Terms that compete early in training
  (a contrastive term that dominates the shared encoder's gradient before the masked-ECG
  decoder has learnt to read the visible tokens) can so be brought in one after another.

  Args:
    config: full config (`loss.*`).
    step: the optimizer step (int32 scalar, traced under jit); None: the full weights (eval).
    balance: per-term multipliers (`balance.multipliers`, `loss.balance`), or None.

  Returns:
    {term: weight} for the four terms; Python floats where no ramp or balance applies, so a
    config without them compiles to exactly the static-weight program.
  """
  w = config.loss
  starts, ramps = w.ramp_start, w.ramp_steps
  out: dict[str, jax.Array | float] = {}
  for k in TERMS:
    start, ramp = int(starts[k]), int(ramps[k])
    if step is None or w[k] == 0 or (start == 0 and ramp == 0):
      out[k] = float(w[k])
      continue
    t = jnp.asarray(step, jnp.float32) - start
    frac = jnp.clip((t + 1.0) / ramp, 0.0, 1.0) if ramp > 0 else (t >= 0).astype(jnp.float32)
    out[k] = w[k] * frac
  if balance:
    out = {k: v * balance[k] if k in balance else v for k, v in out.items()}
  return out


def row_weights(batch: dict) -> tuple[jax.Array, jax.Array]:
  """(row_ok_B, text_ok_B): rows that count (eval batches' padding rows carry `mask` False),
  and of those the rows with a report."""
  row_ok_B = batch.get("mask", jnp.ones_like(batch["has_report"], dtype=bool)).astype(bool)
  return row_ok_B, row_ok_B & batch["has_report"].astype(bool)


def term_weights(ecg_weight_BxM: jax.Array | None, batch: dict, masks: dict,
                 config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """Per-example weights of the terms that are means over examples ('ecg', 'text').

  Args:
    ecg_weight_BxM: the model's `ecg/weight` (`patching.hidden_patch_weight`); None when
      `loss.ecg` is 0.
    batch: the batch (`has_report`, `mask` when present).
    masks: `masking.sample_masks` output.
    config: full config (`loss.*`).

  Returns:
    {'ecg': [B, M], 'text': [B, K]} float32, for the active terms only.
  """
  row_ok_B, text_ok_B = row_weights(batch)
  out = {}
  if config.loss.ecg > 0:
    out["ecg"] = ecg_weight_BxM * row_ok_B[:, None]
  if config.loss.text > 0:
    out["text"] = masks["text"]["weights"] * text_ok_B[:, None]
  return out


def total(outputs: dict, batch: dict, masks: dict, config: ml_collections.ConfigDict,
          scales: dict | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The weighted CG-DMER objective and its metrics.

  loss = w_ecg * MSE(masked ECG patches) + w_text * CE(masked report tokens)
       + w_contrastive * SigLIP + w_disentangle * (DSN(ecg) + DSN(report)).
  Terms with weight 0 are not computed (their branches are absent from `outputs`).

  Args:
    outputs: `CGDMER.__call__` output.
    batch: the batch (`has_report`, and `mask` for padded eval rows when present).
    masks: `masking.sample_masks` output.
    config: full config (`loss.*`).
    scales: the terms' weights (`term_scales`); None: the static `loss.<term>` weights.

  Returns:
    (loss, metrics): metrics has `loss` and, for the active terms only, `loss/ecg`,
    `loss/text`, `loss/contrastive`, `loss/disentangle`, `siglip/temperature`, `siglip/bias`;
    with the ECG term also `ecg_mse/random|lead|time` (`mse_by_mask_kind`).
  """
  w = config.loss
  scale = scales if scales is not None else {k: w[k] for k in TERMS}
  # Batch-padding rows (eval batches carry `mask`) count for nothing.
  row_ok_B, text_ok_B = row_weights(batch)
  weights = term_weights(outputs.get("ecg/weight"), batch, masks, config)
  metrics, loss = {}, jnp.zeros((), jnp.float32)
  if w.ecg > 0:
    metrics["loss/ecg"] = masked_patch_mse(outputs["ecg/recon"], outputs["ecg/target"],
                                           weights["ecg"])
    if "masked_kind" in masks.get("ecg", {}):
      metrics.update(mse_by_mask_kind(outputs["ecg/recon"], outputs["ecg/target"],
                                      weights["ecg"], masks["ecg"]["masked_kind"]))
    loss += scale["ecg"] * metrics["loss/ecg"]
  if w.text > 0:
    metrics["loss/text"] = masked_token_ce(outputs["text/logits"], masks["text"]["targets"],
                                           weights["text"])
    loss += scale["text"] * metrics["loss/text"]
  if w.contrastive > 0:
    siglip = siglip_lib.siglip(config.loss.siglip_impl)
    metrics["loss/contrastive"] = siglip(
        outputs["ecg/embedding"], outputs["text/embedding"], outputs["siglip/temperature"],
        outputs["siglip/bias"], text_ok_B)
    metrics["siglip/temperature"] = outputs["siglip/temperature"]
    metrics["siglip/bias"] = outputs["siglip/bias"]
    loss += scale["contrastive"] * metrics["loss/contrastive"]
  if w.disentangle > 0:
    dis = disentangle_term(outputs, row_ok_B, text_ok_B, w.disentangle_estimator,
                           w.disentangle_cross)
    metrics["loss/disentangle"] = dis
    loss += scale["disentangle"] * dis
  metrics["loss"] = loss
  return loss, metrics


def _centred_gram(x_BxD: jax.Array, w_B: jax.Array) -> jax.Array:
  """Linear Gram matrix of the rows of `x`, columns centred over the valid rows, float32.

  Centring changes no HSIC estimate (the U-statistic is invariant to a shift of the
  features) but keeps float32 from cancelling large means. HIGHEST precision: TPUs and GPUs
  would otherwise multiply float32 in bfloat16 / TF32 passes.
  """
  x_BxD = x_BxD.astype(jnp.float32)
  n = jnp.maximum(jnp.sum(w_B), 1.0)
  x_BxD = (x_BxD - jnp.sum(x_BxD * w_B[:, None], 0, keepdims=True) / n) * w_B[:, None]
  return jnp.matmul(x_BxD, x_BxD.T, precision=jax.lax.Precision.HIGHEST)


def hsic_unbiased(k_BxB: jax.Array, l_BxB: jax.Array, n: jax.Array) -> jax.Array:
  """The unbiased HSIC estimator of Song et al. (2012), from two Gram matrices.

  With K~, L~ the Gram matrices with zeroed diagonals:
    HSIC_1 = [tr(K~ L~) + 1ᵀK~1 · 1ᵀL~1 / ((n-1)(n-2)) - 2/(n-2) · 1ᵀK~L~1] / (n(n-3)).
  Rows and columns of invalid examples must be zero (they then add nothing to any sum).

  Args:
    k_BxB: Gram matrix of one feature set.
    l_BxB: Gram matrix of the other, same rows.
    n: the number of valid rows (at least 4 for the estimator to exist; fewer give 0).

  Returns:
    float32 scalar: an unbiased estimate of HSIC (for linear kernels, of the squared
    Frobenius norm of the cross-covariance); it can be slightly negative.
  """
  off = 1.0 - jnp.eye(k_BxB.shape[0], dtype=jnp.float32)
  k_BxB = k_BxB.astype(jnp.float32) * off
  l_BxB = l_BxB.astype(jnp.float32) * off
  n = jnp.asarray(n, jnp.float32)
  trace = jnp.sum(k_BxB * l_BxB)
  k_B, l_B = jnp.sum(k_BxB, 1), jnp.sum(l_BxB, 1)
  pair = jnp.sum(k_B) * jnp.sum(l_B) / jnp.maximum((n - 1.0) * (n - 2.0), 1.0)
  cross = 2.0 * jnp.sum(k_B * l_B) / jnp.maximum(n - 2.0, 1.0)
  value = (trace + pair - cross) / jnp.maximum(n * (n - 3.0), 1.0)
  return jnp.where(n >= 4.0, value, 0.0)


def debiased_cka(x_BxD: jax.Array, y_BxE: jax.Array,
                 valid_B: jax.Array | None = None) -> jax.Array:
  """Debiased linear CKA (Kornblith et al. 2019 with Song et al.'s unbiased HSIC).

  CKA = HSIC_1(K, L) / sqrt(HSIC_1(K, K) · HSIC_1(L, L)) with K = X Xᵀ, L = Y Yᵀ. Unlike
  `disentangle_loss` (mean squared Pearson correlation of feature pairs, whose value for
  independent features is 1/(n-1) and so hides redundancy at n = 32), its expectation for
  independent features is 0 at any batch size, and it is invariant to rotations and
  isotropic scaling of either set: a specific space that is a linear function of the shared
  one scores high however its columns are mixed. A diagnostic (`diagnose`) and, clipped at 0,
  the 'cka' disentanglement term; its gradient is finite for constant features too.

  Args:
    x_BxD: one feature set (e.g. pooled shared features).
    y_BxE: the other, same rows (e.g. pooled specific features).
    valid_B: bool rows to use; None = all.

  Returns:
    float32 scalar, about 1 for linearly redundant features and 0 for independent ones
    (noise can take it slightly below 0); 0 when a set has no variance or n < 4.
  """
  w_B = _row_weights(x_BxD, valid_B)
  n = jnp.sum(w_B)
  k_BxB, l_BxB = _centred_gram(x_BxD, w_B), _centred_gram(y_BxE, w_B)
  return _cka(hsic_unbiased(k_BxB, l_BxB, n), hsic_unbiased(k_BxB, k_BxB, n),
              hsic_unbiased(l_BxB, l_BxB, n))


def _row_weights(x_BxD: jax.Array, valid_B: jax.Array | None) -> jax.Array:
  """float32 [B]: 1 for the rows that count (all when `valid_B` is None)."""
  if valid_B is None:
    return jnp.ones((x_BxD.shape[0],), jnp.float32)
  return valid_B.astype(jnp.float32)


def _cka(xy: jax.Array, xx: jax.Array, yy: jax.Array) -> jax.Array:
  """CKA from the three HSIC estimates; 0 where a set has no variance."""
  prod = jnp.maximum(xx, 0.0) * jnp.maximum(yy, 0.0)
  ok = prod > 1e-60
  # The square root only of values kept: sqrt'(0) would turn the unused branch's gradient NaN.
  return jnp.where(ok, xy / jnp.sqrt(jnp.where(ok, prod, 1.0)), 0.0)
