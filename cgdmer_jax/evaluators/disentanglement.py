"""Does a trained model disentangle? Diagnostics of its shared and specific spaces on a split.

`losses.disentangle_loss` (mean squared Pearson correlation of feature pairs) sits near
1/(B-1) for independent features, and a specific space that copies the shared one scores
barely more at B = 32, so its value alone says little. On one split of a converted dataset,
streamed in batches (only the pooled features are kept), `diagnose` measures:

* `per_batch`: that loss and the debiased linear CKA (`losses.debiased_cka`) on consecutive
  batches of the training batch size, on the real pairs and with the specific rows shuffled
  against the shared rows (chance level), mean and std over batches;
* `whole_split`: the debiased CKA of shared vs specific on every pooled feature of the split;
* `spaces`: effective rank and per-dimension std of ECG/report shared/specific (collapse);
* `ablation`: the masked-ECG error and the masked-report cross-entropy when the specific (or
  the shared) token features are replaced by their batch mean, against the unmodified
  model, on the same seeded masks (does a head read the specific branch at all?);
* `ridge`: how much of each ECG space the paired report's shared features predict (RidgeCV,
  held-out R²): the shared space should be predictable, the specific one much less.

Features of `per_batch`, `whole_split`, `spaces` and `ridge` are the evaluation features
(`encode_ecg` / `encode_text`: every token, no masking), as every evaluator sees them.
A part a variant lacks (no report tower, no decoder) is `{"absent": reason}`.
"""

from __future__ import annotations

import json
import os
from typing import Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import nnx
from sklearn import linear_model
from sklearn import metrics as sk_metrics

from cgdmer_jax import inference
from cgdmer_jax import losses
from cgdmer_jax import masking
from cgdmer_jax import objective
from cgdmer_jax import progress as progress_lib
from cgdmer_jax.data import reader
from cgdmer_jax.train import checkpointing
from cgdmer_jax.train import workdir_config

SPACES = ("ecg/shared", "ecg/specific", "text/shared", "text/specific")
# Which branch the heads see replaced by its batch mean: none (the unmodified model) or one.
ABLATIONS = ("none", "specific", "shared")
MODEL_KEYS = ("ecg", "lead_mask", "valid_len", "report_ids", "report_len", "has_report", "mask")
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-2, 4, 13))


def absent(reason: str) -> dict[str, str]:
  """The entry of a diagnostic the model cannot have."""
  return {"absent": reason}


def effective_rank(x_NxD: np.ndarray) -> float:
  """exp(entropy) of the normalised singular values of the column-centred features.

  (Roy & Vetterli 2007.) D for isotropic features, k for k equal directions, 1 for a
  collapse onto a line; 0 for constant features.
  """
  x = np.asarray(x_NxD, np.float64)
  s = np.linalg.svd(x - x.mean(0, keepdims=True), compute_uv=False)
  if s.sum() <= 0:
    return 0.0
  p = s / s.sum()
  p = p[p > 0]
  return float(np.exp(-np.sum(p * np.log(p))))


def space_summary(x_NxD: np.ndarray) -> dict[str, float]:
  """Width, effective rank and the min / median / max of the per-dimension std."""
  std_D = np.asarray(x_NxD, np.float64).std(0)
  return {"width": int(x_NxD.shape[1]), "effective_rank": effective_rank(x_NxD),
          "std_min": float(std_D.min()), "std_median": float(np.median(std_D)),
          "std_max": float(std_D.max())}


def _mean_std(values: np.ndarray) -> dict[str, float]:
  return {"mean": float(np.mean(values)), "std": float(np.std(values))}


@jax.jit
def _per_batch(shared_KxBxS: jax.Array, specific_KxBxP: jax.Array) -> dict[str, jax.Array]:
  return {"loss": jax.vmap(losses.disentangle_loss)(shared_KxBxS, specific_KxBxP),
          "cka": jax.vmap(losses.debiased_cka)(shared_KxBxS, specific_KxBxP)}


def batch_statistics(shared_NxS: np.ndarray, specific_NxP: np.ndarray, batch_size: int,
                     seed: int) -> dict:
  """`disentangle_loss` and debiased CKA over consecutive batches, real and shuffled.

  Args:
    shared_NxS: pooled shared features of the split's rows, in stream order.
    specific_NxP: pooled specific features, same rows.
    batch_size: rows per batch (the training batch size); the last partial batch is dropped,
      as in training.
    seed: seed of the permutation that pairs each shared row with another record's
      specific row (the chance level of both measures).

  Returns:
    {'batches', 'batch_size', 'chance_loss' (1/(B-1)), 'loss': {'real', 'shuffled'},
    'cka': {'real', 'shuffled'}} with {'mean', 'std'} over batches; `absent` when the split
    holds no full batch.
  """
  k = len(shared_NxS) // batch_size
  if k == 0 or batch_size < 4:
    return absent(f"{len(shared_NxS)} rows make no batch of {batch_size} (at least 4)")
  perm = np.random.default_rng(seed).permutation(len(specific_NxP))
  n = k * batch_size

  def stack(x):
    return jnp.asarray(x[:n].reshape(k, batch_size, -1), jnp.float32)

  real = jax.device_get(_per_batch(stack(shared_NxS), stack(specific_NxP)))
  shuf = jax.device_get(_per_batch(stack(shared_NxS), stack(specific_NxP[perm])))
  return {"batches": k, "batch_size": batch_size, "chance_loss": 1.0 / (batch_size - 1),
          "loss": {"real": _mean_std(real["loss"]), "shuffled": _mean_std(shuf["loss"])},
          "cka": {"real": _mean_std(real["cka"]), "shuffled": _mean_std(shuf["cka"])}}


def ridge_r2(x_NxD: np.ndarray, y_NxE: np.ndarray, seed: int) -> dict[str, float]:
  """Held-out R² of a ridge regression from `x` to `y` (RidgeCV on a seeded half).

  Args:
    x_NxD: predictors (the report's shared features), standardised on the training half.
    y_NxE: targets (an ECG space).
    seed: seed of the split into halves.

  Returns:
    {'r2': variance-weighted R² on the held-out half (the share of the space's total
    variance explained, so near-constant dimensions do not dominate), 'alpha', 'train',
    'test'}.
  """
  n = len(x_NxD)
  perm = np.random.default_rng(seed).permutation(n)
  tr, te = perm[: n // 2], perm[n // 2:]
  x = np.asarray(x_NxD, np.float64)
  mu, sd = x[tr].mean(0), x[tr].std(0) + 1e-8
  x = (x - mu) / sd
  y = np.asarray(y_NxE, np.float64)
  model = linear_model.RidgeCV(alphas=RIDGE_ALPHAS).fit(x[tr], y[tr])
  r2 = sk_metrics.r2_score(y[te], model.predict(x[te]), multioutput="variance_weighted")
  return {"r2": float(r2), "alpha": float(model.alpha_), "train": len(tr), "test": len(te)}


def _mean_tokens(x_BxNxD: jax.Array, valid_BxN: jax.Array) -> jax.Array:
  """Every token replaced by the mean over the batch's valid tokens."""
  w_BxNx1 = valid_BxN.astype(jnp.float32)[..., None]
  mean_D = jnp.sum(x_BxNxD * w_BxNx1, (0, 1)) / jnp.maximum(jnp.sum(w_BxNx1), 1.0)
  return jnp.broadcast_to(mean_D.astype(x_BxNxD.dtype), x_BxNxD.shape)


def ablate(shared_BxNxS: jax.Array, specific_BxNxD: jax.Array, valid_BxN: jax.Array,
           which: str) -> tuple[jax.Array, jax.Array]:
  """(shared, specific) with `which` ('none', 'specific', 'shared') replaced by its batch mean.

  The mean is over the valid tokens of the valid rows, one vector for every token: whatever
  the branch said about a record or a token is gone, its average level stays.
  """
  if which == "specific":
    return shared_BxNxS, _mean_tokens(specific_BxNxD, valid_BxN)
  if which == "shared":
    return _mean_tokens(shared_BxNxS, valid_BxN), specific_BxNxD
  if which != "none":
    raise ValueError(f"unknown ablation {which!r}; known: {ABLATIONS}")
  return shared_BxNxS, specific_BxNxD


def head_errors(model: nnx.Module, batch: dict, masks: dict,
                config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """The generative heads' errors on one batch, unmodified and with a branch ablated.

  Args:
    model: the merged `CGDMER`.
    batch: the batch (`mask` on padding rows).
    masks: `masking.sample_masks` output, shared by every ablation.
    config: full config.

  Returns:
    {'ecg_mse/<ablation>', 'ecg_mse/weight'} with the ECG decoder and {'text_ce/<ablation>',
    'text_ce/weight'} with the text head: batch means and the weight they are means over.
  """
  out = model(batch, masks)  # the unmodified model: targets, weights, 'none' predictions
  row_ok_B, text_ok_B = losses.row_weights(batch)
  weights = losses.term_weights(out.get("ecg/weight"), batch, masks, config)
  res = {}
  if model.branches["ecg_decoder"]:
    em = masks["ecg"]
    e = model.ecg(batch["ecg"], batch["valid_len"], batch["lead_mask"], em["keep_idx"])
    sh, sp = model.disentangle("ecg", e["tokens"])
    valid = e["valid"] & row_ok_B[:, None]
    for which in ABLATIONS:
      recon = out["ecg/recon"] if which == "none" else model.ecg_decoder(
          *ablate(sh, sp, valid, which), em["keep_idx"], em["masked_idx"])
      res[f"ecg_mse/{which}"] = losses.masked_patch_mse(recon, out["ecg/target"],
                                                        weights["ecg"])
    res["ecg_mse/weight"] = jnp.sum(weights["ecg"])
  if model.branches["text_head"]:
    tm = masks["text"]
    t = model.text(tm["input_ids"], batch["report_len"])
    sh, sp = model.disentangle("text", t["tokens"], t["kv_len"])
    valid = t["valid"] & text_ok_B[:, None]
    for which in ABLATIONS:
      logits = out["text/logits"] if which == "none" else model.text_head(
          *ablate(sh, sp, valid, which), tm["positions"], model.text.token_table())
      res[f"text_ce/{which}"] = losses.masked_token_ce(logits, tm["targets"], weights["text"])
    res["text_ce/weight"] = jnp.sum(weights["text"])
  return res


def batch_fn(graphdef: nnx.GraphDef, config: ml_collections.ConfigDict):
  """Jitted `(params, batch, rng) -> dict`: pooled evaluation features and `head_errors`.

  The features are `ecg/shared`, `ecg/specific` (and `text/shared`, `text/specific` with a
  report tower) of the unmasked inputs; the masks of `head_errors` come from `rng`.
  """

  def fn(params, batch, rng):
    model = nnx.merge(graphdef, params)
    e = model.encode_ecg(batch["ecg"], batch["valid_len"], batch["lead_mask"])
    out = {"ecg/shared": e["shared"], "ecg/specific": e["specific"]}
    if model.branches["text"]:
      t = model.encode_text(batch["report_ids"], batch["report_len"])
      out["text/shared"], out["text/specific"] = t["shared"], t["specific"]
    out.update(head_errors(model, batch, masking.sample_masks(rng, batch, config), config))
    return out
  return jax.jit(fn)


def load(workdir: str | os.PathLike, step: int | str | None
         ) -> tuple[ml_collections.ConfigDict, nnx.GraphDef, objective.Params, str]:
  """(config, graphdef, params, checkpoint folder) of a training workdir at `step`.

  Raises:
    FileNotFoundError: not a training workdir, or no such checkpoint.
  """
  workdir = epath.Path(workdir)
  if not workdir_config.path_of(workdir).is_file():
    raise FileNotFoundError(f"{workdir} is not a training workdir (no config.json)")
  config = workdir_config.read(workdir_config.path_of(workdir))
  graphdef, abstract = objective.abstract_init(config)
  target = inference.checkpoint_target(workdir, step)
  step_dir = checkpointing.resolve_step_dir(target)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  params = checkpointing.restore_params(step_dir, abstract, jax.tree.map(lambda _: device,
                                                                         abstract))
  return config, graphdef, params, str(step_dir)


def collect(params, fn, batches: Iterable[dict], seed: int) -> dict[str, np.ndarray]:
  """Runs `batch_fn`'s `fn` over `batches`: pooled features of the valid rows, head errors.

  Returns:
    {space: [rows, width]} (`text/*` only of rows with a report), `has_report` [rows], and
    {'ecg_mse/<ablation>', 'text_ce/<ablation>'}: the weighted means over the split, exact
    (each batch counts by the weight its mean is over).
  """
  pooled: dict[str, list[np.ndarray]] = {}
  sums: dict[str, float] = {}
  key = jax.random.key(seed)
  for i, local in enumerate(batches):
    batch = {k: local[k] for k in MODEL_KEYS}
    out = jax.device_get(fn(params, batch, jax.random.fold_in(key, i)))
    ok_B = np.asarray(batch["mask"], bool)
    text_B = ok_B & np.asarray(batch["has_report"], bool)
    pooled.setdefault("has_report", []).append(text_B[ok_B])
    for name in SPACES:
      if name in out:
        pooled.setdefault(name, []).append(out[name][text_B if name[:4] == "text" else ok_B])
    for name in out:
      head, _, which = name.partition("/")
      if head in ("ecg_mse", "text_ce"):  # means over the weight: sums of weight * mean
        w = float(out[f"{head}/weight"])
        sums[name] = sums.get(name, 0.0) + (w if which == "weight" else w * float(out[name]))
  res = {k: np.concatenate(v) for k, v in pooled.items()}
  res.update({k: v / max(sums[k.split("/")[0] + "/weight"], 1e-12) for k, v in sums.items()
              if not k.endswith("/weight")})
  return res


def _ablation_report(pooled: dict, head: str, reason: str) -> dict:
  if f"{head}/none" not in pooled:
    return absent(reason)
  base = pooled[f"{head}/none"]
  out = {"model": base}
  for which in ABLATIONS[1:]:
    out[f"{which}_mean"] = pooled[f"{head}/{which}"]
    out[f"{which}_mean_increase"] = pooled[f"{head}/{which}"] - base
  return out


def summarize(pooled: dict, batch_size: int, seed: int) -> dict:
  """The diagnostics (module docstring) of `collect`'s output."""
  no_text = "no report tower (loss.contrastive = loss.text = 0)"
  per_batch, whole = {}, {}
  for mod in ("ecg", "text"):
    if f"{mod}/shared" not in pooled:
      per_batch[mod] = whole[mod] = absent(no_text)
      continue
    sh, sp = pooled[f"{mod}/shared"], pooled[f"{mod}/specific"]
    per_batch[mod] = batch_statistics(sh, sp, batch_size, seed)
    whole[mod] = {"rows": len(sh), "cka": float(losses.debiased_cka(sh, sp))
                  if len(sh) >= 4 else float("nan")}
  spaces = {name: space_summary(pooled[name]) if name in pooled else absent(no_text)
            for name in SPACES}
  ridge = {}
  for name in ("ecg/shared", "ecg/specific"):
    if "text/shared" not in pooled:
      ridge[name] = absent(no_text)
    elif len(pooled["text/shared"]) < 8:
      ridge[name] = absent(f"{len(pooled['text/shared'])} records with a report (< 8)")
    else:
      ridge[name] = ridge_r2(pooled["text/shared"], pooled[name][pooled["has_report"]], seed)
  ablation = {"ecg_mse": _ablation_report(pooled, "ecg_mse", "no ECG decoder (loss.ecg = 0)"),
              "text_ce": _ablation_report(pooled, "text_ce", "no text head (loss.text = 0)")}
  return {"records": int(len(pooled["ecg/shared"])),
          "records_with_report": int(pooled["has_report"].sum()),
          "per_batch": per_batch, "whole_split": whole, "spaces": spaces,
          "ablation": ablation, "ridge": ridge}


def diagnose(workdir: str | os.PathLike, *, step: int | str | None = None, split: str = "val",
             batch_size: int | None = None, data_dir: str | None = None, seed: int = 0,
             progress: bool = True) -> dict:
  """Every diagnostic of the module docstring for a workdir's checkpoint on one split.

  Args:
    workdir: the training workdir.
    step: None/'latest', a step number, or 'best'.
    split: the split of the converted dataset.
    batch_size: rows per batch of the per-batch measures (and of reading); None: the run's
      `data.batch_size`.
    data_dir: the converted dataset; None: the run's `data.dir`.
    seed: seed of the masks, the shuffled pairing and the ridge split.
    progress: show a progress bar.

  Returns:
    JSON-able dict: `workdir`, `checkpoint`, `split`, `batch_size`, `seed`, and
    `summarize`'s keys (printed by `disentanglement_table.format_table`).

  Raises:
    FileNotFoundError: not a workdir, no such checkpoint or dataset.
  """
  config, graphdef, params, ckpt = load(workdir, step)
  data_dir = data_dir or str(config.data.dir)
  batch_size = int(batch_size or config.data.batch_size)
  info = reader.load_info(data_dir)
  total = reader.eval_batch_count(info, split, batch_size, 1)
  batches = reader.eval_batches(data_dir, split=split, global_batch_size=batch_size,
                                process_index=0, process_count=1,
                                on_corrupt=config.data.on_corrupt)
  bar = progress_lib.bar(batches, total=total, desc="diagnose", unit="batch",
                         disable=not progress)
  pooled = collect(params, batch_fn(graphdef, config), bar, seed)
  return {"workdir": str(workdir), "checkpoint": ckpt, "data_dir": data_dir, "split": split,
          "batch_size": batch_size, "seed": seed, **summarize(pooled, batch_size, seed)}


def write_json(res: dict, path: str | os.PathLike) -> None:
  """Writes `diagnose`'s dict to `path` (its folder is created)."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(res, indent=2, sort_keys=True))
