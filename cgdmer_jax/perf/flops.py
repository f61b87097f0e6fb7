"""FLOPs of one training step: an analytic count from the config, XLA's count, and MFU.

Owns three things the benchmark reports:
  - `analytic_step_flops(config, batch)`: the matrix-multiply FLOPs of forward + backward
    (2 FLOPs per multiply-add), written out layer by layer from the config;
  - `xla_step_flops(config, mesh, batch)`: XLA's `cost_analysis()` of the lowered step. XLA
    counts a `while` body once, not once per trip, so a scanned layer stack (or a gradient
    accumulation loop) would be undercounted; the count is therefore taken from a twin of the
    step with the same math but layers unrolled (`scan_layers=False`) and the batch in one
    piece (`batch_chunks = grad_accum_steps = 1`), no rematerialisation
    (model FLOPs, as in MFU, exclude recomputation) and XLA attention (a cuDNN custom call has
    no cost model). XLA also counts element-wise work (norms, softmax, GELU, the optimizer)
    that the analytic count leaves out (a few percent at our sizes, ~10% at the 64-wide
    test size); the dots alone (`hlo_dot_flops`) match it closely. Both are counted on the
    program as lowered, before the backend's passes turn dots into library calls;
  - the peak FLOP/s of known accelerators and MFU = achieved model FLOP/s / peak.
"""

from __future__ import annotations

import math
import re

import jax
import ml_collections

from cgdmer_jax import masking
from cgdmer_jax import objective
from cgdmer_jax.models import bert
from cgdmer_jax.models import bert_tower
from cgdmer_jax.models import cgdmer
from cgdmer_jax.models import disentangle
from cgdmer_jax.train import loop
from cgdmer_jax.train import sharding

# Dense peak per device (one GPU, one TPU chip) in TFLOP/s, for the matmul precision each
# `model.dtype` gets by default: bfloat16 on tensor cores / MXUs; float32 under JAX's default
# precision is TF32 on NVIDIA tensor cores and bfloat16 passes on TPU MXUs. Vendor data
# sheets, no sparsity. Matched by lower-case substring of `device.device_kind`, first hit wins.
PEAK_TFLOPS = (
    # (device_kind substring, bfloat16, float32)
    ("h100 pcie", 756.0, 378.0),
    ("h100", 989.4, 494.7),      # SXM / NVL report "NVIDIA H100 80GB HBM3" etc.
    ("h200", 989.4, 494.7),
    ("a100", 312.0, 156.0),
    ("tpu v4", 275.0, 275.0),
    ("tpu v5 lite", 197.0, 197.0),  # v5e
    ("tpu v5e", 197.0, 197.0),
    ("tpu v5p", 459.0, 459.0),
    ("tpu v5", 459.0, 459.0),    # v5p reports "TPU v5"
    ("tpu v6 lite", 918.0, 918.0),  # v6e (Trillium)
)


def peak_flops_per_device(device_kind: str, dtype: str,
                          override_tflops: float = 0.0) -> float | None:
  """Peak FLOP/s of one device for `dtype` ('bfloat16' | 'float32'), or None when unknown.

  Args:
    device_kind: `jax.devices()[0].device_kind`.
    dtype: `config.model.dtype`.
    override_tflops: a user-given peak in TFLOP/s (`--peak_tflops`); wins when > 0.

  Returns:
    FLOP/s, or None (e.g. on CPU without an override).
  """
  if override_tflops > 0:
    return override_tflops * 1e12
  kind = device_kind.lower()
  for key, bf16, f32 in PEAK_TFLOPS:
    if key in kind:
      return (bf16 if dtype == "bfloat16" else f32) * 1e12
  return None


# ---------------------------------------------------------------------------------------------
# Analytic count.


def _dense(tokens: float, d_in: int, d_out: int) -> float:
  return 2.0 * tokens * d_in * d_out


def _block(batch: float, seq: int, width: int, mlp_ratio: int, hidden: int = 0) -> float:
  """Forward FLOPs of one block over `batch` sequences of `seq` tokens (MLP width `hidden`,
  default `mlp_ratio * width`; pre- and post-norm blocks do the same matmuls)."""
  tokens = batch * seq
  proj = _dense(tokens, width, 3 * width) + _dense(tokens, width, width)
  mlp = 2 * _dense(tokens, width, hidden or mlp_ratio * width)
  attention = 2 * 2.0 * batch * seq * seq * width  # q.k scores and p.v, all heads
  return proj + mlp + attention


def _token_encoder(batch: float, seq: int, width_in: int, width: int, depth: int,
                   mlp_ratio: int) -> float:
  """`disentangle.token_encoder`: depth blocks, or LayerNorm + Dense at depth 0."""
  if depth == 0:
    return _dense(batch * seq, width_in, width)
  return depth * _block(batch, seq, width, mlp_ratio)


def analytic_step_flops(config: ml_collections.ConfigDict, batch_size: int) -> dict[str, float]:
  """Matmul FLOPs of one training step (forward + backward) on a global batch.

  The backward of a matmul costs twice its forward (input and weight gradients), except where
  the input needs no gradient (the ECG patch projection reading the data directly, without
  `model.patch_norm`'s learnable LayerNorm in front: weight gradient only).
  Per-token element-wise work and the optimizer are not counted.

  Args:
    config: full config.
    batch_size: global batch B.

  Returns:
    dict of forward FLOPs per part (`ecg backbone`, `ecg disentangle`, `ecg decoder`,
    `text backbone`, `text disentangle`, `text head`, `heads and losses`) plus `forward` and
    `total` (forward + backward). A BERT tower's frozen embeddings + first K blocks
    (`model.text.freeze_layers`) get no backward pass: gradients stop at block K's output.
  """
  m = config.model
  br = cgdmer.branches(config)
  B = float(batch_size)
  counts = masking.ecg_mask_counts(config)
  N, V, M = counts.num_tokens, counts.num_visible, counts.num_masked
  S, De, r = disentangle.shared_width(m), m.ecg_width, m.mlp_ratio
  fwd: dict[str, float] = {}
  patch = _dense(B * V, m.patch_size, De)
  # `model.patch_stats`: 2 numbers per patch, read from the data (weight gradient only).
  stats = (_dense(B * V, 2, De) if m.patch_norm and m.patch_stats
           else 0.0)
  fwd["ecg backbone"] = patch + stats + m.ecg_depth * _block(B, V, De, r)
  ecg_dis = _token_encoder(B, V, S, S, m.shared_depth, r)
  ecg_dis += _token_encoder(B, V, De, De, m.specific_depth, r)
  if De != S:
    ecg_dis += _dense(B * V, De, S)
  ecg_dis += 2.0 * B * V * (S + De)  # masked-mean pooling (an einsum)
  fwd["ecg disentangle"] = ecg_dis
  if br["ecg_decoder"]:
    W = m.dec_width
    fwd["ecg decoder"] = (_dense(B * V, S + De, W) + m.dec_depth * _block(B, N, W, r)
                          + _dense(B * M, W, m.patch_size))
  heads = 0.0
  frozen = 0.0
  if br["text"]:
    L, Dt = m.max_report_len, m.text_width
    if bert_tower.is_bert(m):
      cfg = bert.BertConfig.from_dict(m.text.bert)
      per_block = _block(B, L, Dt, r, hidden=cfg.intermediate_size)
      fwd["text backbone"] = cfg.num_hidden_layers * per_block
      frozen = int(m.text.freeze_layers) * per_block
    else:
      fwd["text backbone"] = m.text_depth * _block(B, L, Dt, r)
    txt_dis = _token_encoder(B, L, S, S, m.shared_depth, r)
    txt_dis += _token_encoder(B, L, Dt, Dt, m.specific_depth, r)
    if Dt != S:
      txt_dis += _dense(B * L, Dt, S)
    txt_dis += 2.0 * B * L * (S + Dt)
    fwd["text disentangle"] = txt_dis
    if br["text_head"]:
      K = masking.num_text_slots(config)
      fwd["text head"] = _dense(B * K, S + Dt, Dt) + _dense(B * K, Dt, m.vocab_size)
      if bert_tower.is_bert(m) and m.text.mlm_head:
        fwd["text head"] += _dense(B * K, Dt, Dt)  # the checkpoint head's transform
  if br["contrastive"]:
    heads += 2 * _dense(B, S, m.embed_dim) + 2.0 * B * B * m.embed_dim  # projections, logits
  if config.loss.disentangle > 0:
    heads += _dense(S, B, De) + (_dense(S, B, m.text_width) if br["text"] else 0.0)
  fwd["heads and losses"] = heads
  forward = sum(fwd.values())
  out = dict(fwd)
  out["forward"] = forward
  # Backward = 2x forward; a patch projection that reads the data directly: 1x; frozen: 0x.
  out["total"] = (3 * forward - (0.0 if m.patch_norm else patch) - stats
                  - 2 * frozen)
  return out


# ---------------------------------------------------------------------------------------------
# XLA's count and MFU.


def counting_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The twin config whose compiled step XLA can count.

  Layers unrolled, the batch in one piece (accumulation chunks are a loop too; exact
  accumulation computes the same math), no remat, XLA attention.
  """
  twin = ml_collections.ConfigDict(config.to_dict())
  twin.model.scan_layers = False
  twin.model.batch_chunks = 1
  twin.optim.grad_accum_steps = 1
  twin.model.remat = False
  twin.model.attention = "xla"
  return twin


def cost_of(program) -> dict[str, float]:
  """`flops`, `bytes accessed`, `transcendentals` of a lowered or compiled program (0: absent)."""
  cost = program.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX returned one dict per program
    cost = cost[0] if cost else {}
  cost = cost or {}
  return {k: float(cost.get(k, 0.0)) for k in ("flops", "bytes accessed", "transcendentals")}


def compiled_memory_bytes(compiled) -> int | None:
  """Bytes one device needs for a compiled program by the compiler's buffer assignment.

  temp + arguments + outputs - aliased (donated) buffers, from `compiled.memory_analysis()`;
  None where the backend has no analysis (JAX documents that it may raise
  NotImplementedError, and its result's structure is not promised across versions).
  """
  try:
    mem = compiled.memory_analysis()
  except NotImplementedError:
    return None
  if mem is None:
    return None
  return int(mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
             - mem.alias_size_in_bytes)


_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = \w+\[([\d,]*)\]")
_DOT = re.compile(r"= \w+\[([\d,]*)\][^ ]* dot\(%?([\w.\-]+), %?([\w.\-]+)\).*?"
                  r"lhs_contracting_dims=\{([\d,]*)\}")


def hlo_dot_flops(hlo_text: str) -> float:
  """2 * multiply-adds of every `dot` in an HLO module's text (loop bodies counted once).

  Reads both the lowered module's text (`%` optional) and a compiled one's.

  The matmul part of XLA's count, to set beside the analytic count (which is matmuls only);
  the rest of `cost_analysis()['flops']` is element-wise work.
  """
  shapes = {}
  for line in hlo_text.splitlines():
    m = _INSTR.match(line)
    if m:
      shapes[m.group(1)] = [int(d) for d in m.group(2).split(",") if d]
  total = 0.0
  for m in _DOT.finditer(hlo_text):
    out = [int(d) for d in m.group(1).split(",") if d]
    lhs = shapes.get(m.group(2))
    if lhs is None:
      continue
    contracted = math.prod(lhs[int(d)] for d in m.group(4).split(",") if d)
    total += 2.0 * math.prod(out) * contracted
  return total


def xla_step_flops(config: ml_collections.ConfigDict) -> dict[str, float]:
  """FLOPs of one global training step by XLA's cost analysis of the counting twin.

  Compiles (does not run) the twin's step for the whole global batch on ONE device: model
  FLOPs are a property of the math, and a partitioned program's per-device count times the
  device count would also count the work every device repeats (e.g. the optimizer update of
  replicated parameters) once per device.

  Args:
    config: full config (its `data.batch_size` is the global batch).

  Returns:
    dict: `flops` (cost analysis: matmuls and element-wise work) and `dot_flops` (the
    matmuls alone, `hlo_dot_flops`) of one step on the global batch, and `memory_bytes`
    (`compiled_memory_bytes` of the twin: without remat and with XLA attention an upper
    bound of the configured step's, used to size the batch to a device).
  """
  twin = counting_config(config)
  twin.mesh.data, twin.mesh.fsdp = 1, 1
  mesh = sharding.make_mesh(twin, devices=jax.devices()[:1])
  s = loop.setup(twin, mesh)
  batch_sh = sharding.batch_sharding(mesh)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sh)
           for k, v in objective.dummy_batch(twin, twin.data.batch_size).items()}
  with jax.set_mesh(mesh):
    lowered = s.train_step.lower(s.abstract_state, batch)
    compiled = lowered.compile()
  # Counted on the program as lowered, before the backend's passes: a GPU backend rewrites
  # most dots into cuBLAS / Triton custom calls, which neither its cost analysis nor the text
  # shows as dots (on an H200 the compiled count was 4-6x low, and varied with autotuning).
  return dict(flops=cost_of(lowered)["flops"],
              dot_flops=hlo_dot_flops(lowered.as_text(dialect="hlo")),
              memory_bytes=compiled_memory_bytes(compiled))


def mfu(flops_per_step: float, step_seconds: float, num_devices: int,
        peak_per_device: float | None) -> float | None:
  """Model FLOPs utilisation in [0, 1], or None without a known peak."""
  if not peak_per_device or step_seconds <= 0 or not math.isfinite(step_seconds):
    return None
  return flops_per_step / step_seconds / (num_devices * peak_per_device)
