"""CG-DMER: the wiring of the ECG and report towers, disentanglement, projections and heads.

Owns the ablation variants, which branches exist for a config (the ablation switches) and the
output dict of the pretraining forward pass. Branches are decided statically from the
`config.loss.*` weights:
  - the report tower (text backbone, text specific encoder, text projection) exists when the
    contrastive or the masked-text term is on (so `ecg_mask_only` never runs it);
  - the ECG decoder exists when `loss.ecg > 0`, the text head when `loss.text > 0`;
  - the SigLIP temperature/bias exist when `loss.contrastive > 0`.
The ECG backbone, the shared encoder, the ECG specific encoder and the ECG projection always
exist: together they are the exported ECG encoder (`encode_ecg`).

Contrast on masked inputs (FLIP, Li et al. CVPR 2023; also D-BETA): one pass per modality
serves both the contrastive and the generative terms, so the ECG embedding of pretraining is
pooled from the visible tokens and the report embedding from the corrupted report. Evaluation
and export (`encode_ecg` / `encode_text`) see every token.

The module holds only `nnx.Param` state (no dropout, batch stats or RNG state).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from cgdmer_jax.models import decoders
from cgdmer_jax.models import disentangle
from cgdmer_jax.models import ecg
from cgdmer_jax.models import layers
from cgdmer_jax.models import patching
from cgdmer_jax.models import text

PROBE_FEATURES = ("shared", "specific", "concat")
HEADS_SHARED = ("full", "stop_gradient")

# The ablation variants of the paper's ablation table (`configs/pretrain.py:variant=...`).
# Each sets the loss weights (0 switches a term off and the model skips the branch that only
# that term needs) and whether the ECG and the report are masked at all. With the default
# `loss.balance='grad_norm'` (balance.py) the weights of a variant with two or more terms are
# priorities: each term's gradient on the shared parameters gets its weight times the terms'
# geometric-mean norm, so SigLIP (4) keeps two thirds of the full model's pull and the masked
# ECG and report terms one sixth each (docs/RECIPE.md, "Why the terms compete").
VARIANTS = {
    # SigLIP between (unmasked) ECG and report only.
    "contrastive": dict(ecg=0.0, text=0.0, contrastive=1.0, disentangle=0.0,
                        mask_ecg=False, mask_text=False),
    # SigLIP between the masked ECG and the masked report: the row above at the masking of the
    # rows below, so "contrastive -> + masked ECG" changes one thing (the generative term).
    "contrastive_masked": dict(ecg=0.0, text=0.0, contrastive=1.0, disentangle=0.0,
                               mask_ecg=True, mask_text=True),
    # + spatial-temporal masked ECG modelling.
    "ecg_mask": dict(ecg=1.0, text=0.0, contrastive=4.0, disentangle=0.0,
                     mask_ecg=True, mask_text=False),
    # + masked report reconstruction.
    "text_mask": dict(ecg=1.0, text=1.0, contrastive=4.0, disentangle=0.0,
                      mask_ecg=True, mask_text=True),
    # + disentanglement: full CG-DMER.
    "full": dict(ecg=1.0, text=1.0, contrastive=4.0, disentangle=0.5,
                 mask_ecg=True, mask_text=True),
    # Masked ECG modelling alone (no report): the ST-MEM-matched throughput comparison.
    "ecg_mask_only": dict(ecg=1.0, text=0.0, contrastive=0.0, disentangle=0.0,
                          mask_ecg=True, mask_text=False),
}


def variants_without_reports() -> list[str]:
  """The variants whose model has no report tower: they train on ECGs alone."""
  return sorted(k for k, v in VARIANTS.items() if not (v["contrastive"] > 0 or v["text"] > 0))


class SigLIPScalars(nnx.Module):
  """Learnable SigLIP log-temperature and bias (Zhai et al. 2023: init log 10 and -10)."""

  def __init__(self, init_log_temp: float, init_bias: float):
    self.log_temp = nnx.Param(jnp.asarray(init_log_temp, jnp.float32))
    self.bias = nnx.Param(jnp.asarray(init_bias, jnp.float32))


def branches(config: ml_collections.ConfigDict) -> dict[str, bool]:
  """Which optional branches a config builds (and runs); validates the combination.

  Returns:
    dict with bools `text` (report tower), `ecg_decoder`, `text_head`, `contrastive`.
  """
  w = config.loss
  out = dict(text=w.contrastive > 0 or w.text > 0, ecg_decoder=w.ecg > 0,
             text_head=w.text > 0, contrastive=w.contrastive > 0)
  if out["ecg_decoder"] and not config.mask.ecg:
    raise ValueError("loss.ecg > 0 needs mask.ecg = True (nothing to reconstruct otherwise)")
  if out["text_head"] and not config.mask.text:
    raise ValueError("loss.text > 0 needs mask.text = True (nothing to predict otherwise)")
  if config.model.heads_shared not in HEADS_SHARED:
    raise ValueError(f"unknown model.heads_shared {config.model.heads_shared!r}; "
                     f"known: {HEADS_SHARED}")
  if config.model.probe_features not in PROBE_FEATURES:
    raise ValueError(f"unknown model.probe_features {config.model.probe_features!r}; "
                     f"known: {PROBE_FEATURES}")
  return out


class CGDMER(nnx.Module):
  """The pretraining model. See the module docstring for which branches exist."""

  def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    m = config.model
    self.branches = branches(config)
    self.norm_patch_target = bool(m.norm_patch_target)
    self.probe_features = m.probe_features
    self.heads_shared = m.heads_shared
    ds = disentangle.shared_width(m)
    dtype = layers.compute_dtype(m.dtype)
    self.ecg = ecg.ECGEncoder(config, rngs=rngs)
    modalities = ("ecg", "text") if self.branches["text"] else ("ecg",)
    self.disentangle = disentangle.Disentangler(config, modalities, rngs=rngs)
    self.ecg_proj = layers.dense(ds, m.embed_dim, dtype=dtype, rngs=rngs)
    if self.branches["text"]:
      self.text = text.build(config, rngs=rngs)
      self.text_proj = layers.dense(ds, m.embed_dim, dtype=dtype, rngs=rngs)
    if self.branches["contrastive"]:
      self.siglip = SigLIPScalars(m.siglip_init_log_temp, m.siglip_init_bias)
    if self.branches["ecg_decoder"]:
      self.ecg_decoder = decoders.ECGDecoder(config, rngs=rngs)
    if self.branches["text_head"]:
      self.text_head = decoders.TextHead(config, rngs=rngs)

  # ---- pretraining forward -------------------------------------------------------------

  def __call__(self, batch: dict, masks: dict) -> dict[str, jax.Array]:
    """The pretraining forward pass on masked inputs.

    Args:
      batch: `ecg` [B, 12, T] mV, `lead_mask` [B, 12], `valid_len` [B], `report_ids` [B, L],
        `report_len` [B], `has_report` [B].
      masks: `masking.sample_masks(...)` output.

    Returns:
      dict, float32 unless noted: `ecg/shared` [B, S], `ecg/specific` [B, De] (pooled over
      the visible valid tokens); when the report tower runs, `text/shared` [B, S] and
      `text/specific` [B, Dt]; when contrastive, `ecg/embedding`, `text/embedding` [B, E]
      (unit norm), `siglip/temperature`, `siglip/bias` (scalars); with the ECG decoder,
      `ecg/recon`, `ecg/target` [B, M, P] and `ecg/weight` [B, M] (1 where the hidden patch
      has signal: lead recorded and not entirely padding); with the text head, `text/logits`
      [B, K, vocab].
    """
    out = {}
    em = masks["ecg"]
    e = self.ecg(batch["ecg"], batch["valid_len"], batch["lead_mask"], em["keep_idx"])
    ecg_sh, ecg_sp = self.disentangle("ecg", e["tokens"])
    out["ecg/shared"] = layers.masked_mean(ecg_sh, e["valid"])
    out["ecg/specific"] = layers.masked_mean(ecg_sp, e["valid"])
    if self.branches["contrastive"]:
      out["ecg/embedding"] = layers.l2_normalize(self.ecg_proj(out["ecg/shared"]))
    if self.branches["ecg_decoder"]:
      out["ecg/recon"] = self.ecg_decoder(self._for_heads(ecg_sh), ecg_sp, em["keep_idx"],
                                          em["masked_idx"])
      target = patching.gather_tokens(e["patches"], em["masked_idx"])
      if self.norm_patch_target:
        # MAE's norm_pix_loss: each target patch standardised on its own samples.
        mu = jnp.mean(target, axis=-1, keepdims=True)
        var = jnp.var(target, axis=-1, keepdims=True)
        target = (target - mu) * jax.lax.rsqrt(var + 1e-6)
      out["ecg/target"] = target
      out["ecg/weight"] = patching.hidden_patch_weight(
          batch["valid_len"], batch["lead_mask"], em["masked_idx"], self.ecg.num_time_patches,
          self.ecg.patch_size)

    if self.branches["text"]:
      tm = masks["text"]
      t = self.text(tm["input_ids"], batch["report_len"])
      txt_sh, txt_sp = self.disentangle("text", t["tokens"], t["kv_len"])
      out["text/shared"] = layers.masked_mean(txt_sh, t["valid"])
      out["text/specific"] = layers.masked_mean(txt_sp, t["valid"])
      if self.branches["contrastive"]:
        out["text/embedding"] = layers.l2_normalize(self.text_proj(out["text/shared"]))
      if self.branches["text_head"]:
        out["text/logits"] = self.text_head(self._for_heads(txt_sh), txt_sp, tm["positions"],
                                            self.text.token_table())
    if self.branches["contrastive"]:
      out["siglip/temperature"] = jnp.exp(self.siglip.log_temp[...])
      out["siglip/bias"] = self.siglip.bias[...]
    return out

  def _for_heads(self, shared: jax.Array) -> jax.Array:
    """Shared token features as the generative heads read them (`model.heads_shared`)."""
    return jax.lax.stop_gradient(shared) if self.heads_shared == "stop_gradient" else shared

  # ---- evaluation / export: no masking, every token -------------------------------------

  def encode_ecg(self, ecg_BxCxT: jax.Array, valid_len_B: jax.Array | None = None,
                 lead_mask_BxC: jax.Array | None = None) -> dict[str, jax.Array]:
    """Features of whole (unmasked) ECGs.

    Args:
      ecg_BxCxT: ECG in millivolts (normalised inside, as in pretraining).
      valid_len_B: samples before padding; None = T.
      lead_mask_BxC: recorded leads; None = all.

    Returns:
      dict float32: `embedding` [B, E] (unit norm, zero-shot), `shared` [B, S], `specific`
      [B, De], `probe` (the linear-probing feature chosen by `model.probe_features`:
      'shared', 'specific' or 'concat' = [shared, specific], the default since the
      specific part is exactly what the contrastive space may drop).
    """
    B, C, T = ecg_BxCxT.shape
    if valid_len_B is None:
      valid_len_B = jnp.full((B,), T, jnp.int32)
    if lead_mask_BxC is None:
      lead_mask_BxC = jnp.ones((B, C), bool)
    e = self.ecg(ecg_BxCxT, valid_len_B, lead_mask_BxC)
    sh, sp = self.disentangle("ecg", e["tokens"])
    shared = layers.masked_mean(sh, e["valid"])
    specific = layers.masked_mean(sp, e["valid"])
    probe = dict(shared=shared, specific=specific,
                 concat=jnp.concatenate([shared, specific], -1))[self.probe_features]
    return dict(embedding=layers.l2_normalize(self.ecg_proj(shared)), shared=shared,
                specific=specific, probe=probe)

  def encode_text(self, ids_BxL: jax.Array, len_B: jax.Array) -> dict[str, jax.Array]:
    """Features of whole (unmasked) reports, e.g. zero-shot class prompts.

    Args:
      ids_BxL: int ids `BOS ... EOS PAD...`, L = `model.max_report_len`.
      len_B: ids before padding.

    Returns:
      dict float32: `embedding` [B, E] (unit norm), `shared` [B, S], `specific` [B, Dt].
    """
    if not self.branches["text"]:
      raise ValueError("this model has no report tower (loss.contrastive = loss.text = 0)")
    t = self.text(ids_BxL, len_B)
    sh, sp = self.disentangle("text", t["tokens"], t["kv_len"])
    shared = layers.masked_mean(sh, t["valid"])
    return dict(embedding=layers.l2_normalize(self.text_proj(shared)), shared=shared,
                specific=layers.masked_mean(sp, t["valid"]))
