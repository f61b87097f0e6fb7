"""CG-DMER pretraining.

Usage:
  python -m cgdmer_jax.main --config=configs/pretrain.py:size=tiny --workdir=DIR \
      --config.data.dir=DATA_DIR [--config.optim.lr=3e-4 ...]

Config arg keys (after `:`): size (tiny|mini|small|base), variant (full|contrastive|ecg_mask|
text_mask|ecg_mask_only|contrastive_masked, the paper's ablation rows; models/cgdmer.VARIANTS),
fs (data sampling rate, default 100 for tiny and mini, 500 otherwise), text (transformer|bert:
the report backbone; bert is BERT-base, or the checkpoint of --config.model.text.init_from=DIR,
a local Hugging Face folder; see docs/MODEL.md).
"""

from __future__ import annotations

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = common.parse_arg(arg, size="tiny", variant="full", fs=0, text="transformer")
  cpu = args.size in common.CPU_SIZES
  fs = args.fs or (100 if cpu else 500)
  if args.variant not in common.VARIANTS:
    raise ValueError(f"unknown variant {args.variant!r}; known: {sorted(common.VARIANTS)}")
  variant = common.VARIANTS[args.variant]

  config = ml_collections.ConfigDict()
  config.seed = 0
  config.variant = args.variant
  # CPU sizes: 3 000 steps, about 26 min for tiny on 2 cores (docs/RECIPE.md#the-defaults-and-why).
  config.total_steps = 3_000 if cpu else 20_000
  # Stop after this many steps in this process, with a checkpoint (0: run to total_steps).
  # For cluster job slots shorter than the whole run: resubmit the same command to continue.
  config.steps_per_run = 0

  config.data = ml_collections.ConfigDict()
  config.data.dir = ml_collections.config_dict.placeholder(str)
  # More training datasets, mixed in: "DIR[:WEIGHT],DIR2[:WEIGHT2]" (cgdmer_jax/data/mixture.py);
  # data.weight is data.dir's weight. No weights: sampled in proportion to their train splits.
  # data.dir stays the primary: its val split, tokenizer and record shapes are the run's.
  config.data.mix = ""
  config.data.weight = 0.0
  config.data.fs = fs
  config.data.seconds = 10.0
  config.data.batch_size = 32 if cpu else 256   # global batch
  # The val pass's batch. The same as training's, so the terms that couple a batch's examples
  # (SigLIP, disentanglement) have comparable train and val values (train/val_loss.py).
  config.data.eval_batch_size = config.data.batch_size
  config.data.shuffle_buffer = 1_000 if cpu else 10_000
  # Global batches built this many steps ahead on a background thread (prefetch.device_batches),
  # so reading and the host-to-device copy overlap the running step; 0 = on demand.
  config.data.prefetch = 2
  # 'none': millivolts as stored, the voltage is a feature; 'zscore': per record and lead over
  # the valid samples (docs/RECIPE.md#amplitude).
  config.data.normalize = "none"
  config.data.train_split = "train"
  config.data.val_split = "val"
  # A record failing its CRC: 'error' stops (naming the shard, state saved); 'skip' reads past
  # it and counts it (metric data/damaged_records). See cgdmer_jax/data/reader.py.
  config.data.on_corrupt = "error"

  config.model = common.model_config(args.size, fs=fs, text=args.text)

  # Spatial-temporal masking over the (lead x time) token grid; counts are static.
  # lead_ratio: whole leads hidden; time_ratio: time patches hidden in every lead;
  # token_ratio: random tokens hidden among the rest. Defaults hide ~72% of tokens,
  # close to MAE / ST-MEM's 75%.
  config.mask = ml_collections.ConfigDict()
  config.mask.ecg = variant["mask_ecg"]
  config.mask.lead_ratio = 0.25
  config.mask.time_ratio = 0.25
  config.mask.token_ratio = 0.5
  # BERT-style report masking: text_ratio of the real tokens are selected; of those 80% become
  # <mask>, 10% a random token, 10% stay (Devlin et al. 2019).
  config.mask.text = variant["mask_text"]
  config.mask.text_ratio = 0.15

  # Loss weights; 0 switches a term off.
  config.loss = ml_collections.ConfigDict()
  for k in ("ecg", "text", "contrastive", "disentangle"):
    config.loss[k] = variant[k]
  # Ramp-in per term: weight 0 before ramp_start.<term>, then linear up to loss.<term> over
  # ramp_steps.<term> steps (losses.term_scales); 0 / 0 = the full weight from step 0.
  config.loss.ramp_start = ml_collections.ConfigDict(
      {k: 0 for k in ("ecg", "text", "contrastive", "disentangle")})
  config.loss.ramp_steps = ml_collections.ConfigDict({k: 0 for k in config.loss.ramp_start})
  # Per-term gradient balancing (cgdmer_jax/train/balance.py): 'grad_norm' multiplies each term so
  # its gradient on the parameters the terms share has the geometric mean of their norms
  # (measured every balance_every_steps steps on the step's batch, EMA decay balance_decay,
  # multipliers within [1/balance_max, balance_max]); the loss.<term> weights are then the
  # terms' priorities. 'none': the static weights (docs/RECIPE.md#why-the-terms-compete).
  config.loss.balance = "grad_norm"
  # One measurement costs about a forward and four backward passes (docs/TRAINING.md).
  config.loss.balance_every_steps = 10 if cpu else 50
  config.loss.balance_decay = 0.7
  config.loss.balance_max = 1e4
  # SigLIP on the global batch: 'all_gather' (XLA gathers the report embeddings, each device
  # holds a [B/devices, B] logits block; simplest, fine up to a few thousand) or 'chunked'
  # (a ring of ppermutes, one [B/devices, B/devices] block at a time: for global batches of
  # tens of thousands; see cgdmer_jax/siglip.py). Same loss and gradients.
  config.loss.siglip_impl = "all_gather"
  # The disentanglement term (losses.disentangle_term): 'pearson' (DSN's soft orthogonality as
  # mean squared Pearson correlation; chance level 1/(batch-1)) or 'cka' (debiased linear CKA,
  # about 0 for independent features at any batch size); `disentangle_cross` also pushes each
  # specific space away from the paired other modality's shared space (docs/MODEL.md).
  config.loss.disentangle_estimator = "pearson"
  config.loss.disentangle_cross = False

  config.optim = ml_collections.ConfigDict()
  config.optim.lr = 1e-3 if cpu else 3e-4
  config.optim.weight_decay = 0.05
  config.optim.b1 = 0.9
  config.optim.b2 = 0.95
  config.optim.warmup_steps = 100 if cpu else 1_000
  config.optim.clip_norm = 1.0
  # Learning-rate multiplier of the SigLIP temperature and bias (cgdmer_jax/train/optim.py).
  config.optim.siglip_lr_mult = 1.0
  config.optim.grad_accum_steps = 1

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 200 if cpu else 1_000
  config.checkpoint.keep = 3
  # Resume precedence: latest checkpoint in the workdir > resume_from > init_from > scratch.
  config.checkpoint.resume_from = ml_collections.config_dict.placeholder(str)
  config.checkpoint.init_from = ml_collections.config_dict.placeholder(str)
  # An unreadable latest checkpoint: False warns, sets it aside and restores the newest
  # readable one; True stops with the error instead.
  config.checkpoint.strict_restore = False

  # Device mesh: data * fsdp must equal the device count; -1 takes what is left.
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1
  config.mesh.fsdp = 1

  # Model selection: at every eval, the zero-shot macro AUC on a MERL task's val split (e.g.
  # 'ptbxl_super' with data_root holding ptbxl/ and merl_zeroshot/); the best parameters are
  # kept in <workdir>/best/. Off when zero_shot_task is ''.
  config.best = ml_collections.ConfigDict()
  config.best.zero_shot_task = ""
  config.best.data_root = ml_collections.config_dict.placeholder(str)

  config.log_every_steps = 10 if cpu else 50
  # Per-term gradient norms and cosines (cgdmer_jax/train/diagnostics.py), logged every this many
  # steps (0: off). One extra forward and batched backward pass each time, outside the step.
  config.diagnostics = ml_collections.ConfigDict()
  config.diagnostics.every_steps = 5 * config.log_every_steps
  config.eval_every_steps = 200 if cpu else 1_000
  config.eval_steps = 0  # 0: the whole val split
  return config
