"""Transformer building blocks shared by every tower.

Owns: compute-dtype lookup, fixed sin-cos positions, multi-head self-attention (through
`jax.nn.dot_product_attention`, or our einsum form with a hand-written backward), the pre-norm
block, layer stacks (scanned with one compiled
block, or unrolled; optionally rematerialised), the small LayerNorm+Dense head used where a
stack has depth 0, and masked mean pooling.

Precision: parameters are float32; matmuls run in the compute dtype (`model.dtype`); the
residual stream, LayerNorms and the attention softmax stay float32 (the softmax is float32
inside `jax.nn.dot_product_attention` whatever the input dtype).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# Weight init as in MAE / ST-MEM: xavier-uniform matrices, zero biases, N(0, 0.02) embeddings.
KERNEL_INIT = nnx.initializers.xavier_uniform()
EMBED_INIT = nnx.initializers.normal(stddev=0.02)
LN_EPS = 1e-6  # ViT / MAE LayerNorm epsilon.

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str) -> jnp.dtype:
  """The jnp dtype of `model.dtype` ('float32' | 'bfloat16')."""
  if name not in DTYPES:
    raise ValueError(f"unknown model.dtype {name!r}; known: {sorted(DTYPES)}")
  return DTYPES[name]


ATTENTION_IMPLS = ("auto", "xla", "cudnn", "einsum")


def attention_impl(name: str, dtype: jnp.dtype) -> str:
  """The attention implementation of `model.attention`.

  'xla' / 'cudnn' are `jax.nn.dot_product_attention`'s implementations; 'einsum' is
  `einsum_attention` (same math, leaner backward; measured faster on CPU, docs/PERFORMANCE.md).
  'auto' picks cuDNN flash attention on GPU for 16-bit compute (cuDNN has no float32 kernel),
  'einsum' on CPU and 'xla' otherwise.
  """
  if name == "auto":
    backend = jax.default_backend()
    if backend == "gpu" and dtype == jnp.bfloat16:
      return "cudnn"
    return "einsum" if backend == "cpu" else "xla"
  if name not in ATTENTION_IMPLS:
    raise ValueError(f"unknown model.attention {name!r}; known: {ATTENTION_IMPLS}")
  return name


def cudnn_attention(q_BxNxHxK: jax.Array, k_BxNxHxK: jax.Array, v_BxNxHxK: jax.Array,
                    kv_len_B: jax.Array | None, implementation: str = "cudnn") -> jax.Array:
  """Self-attention through cuDNN's fused kernel at any sequence length.

  cuDNN's kernel has no backward pass for an odd sequence length: jax raises
  `NotImplementedError: Unsupported sequence length Q 337, KV 337` at the first training step
  (measured on an H200, jax 0.11.2: the base ECG encoder's 336 visible tokens + 1). An odd
  length is padded by one zero query row, sliced off the output, and one zero key, hidden by
  the kernel's own padding mask (`key_value_seq_lengths`), so every real query attends to
  exactly its keys. `implementation` exists so the padding can be tested off a GPU.
  """
  B, N = q_BxNxHxK.shape[:2]
  if N % 2 == 0:
    return jax.nn.dot_product_attention(q_BxNxHxK, k_BxNxHxK, v_BxNxHxK,
                                        key_value_seq_lengths=kv_len_B,
                                        implementation=implementation)
  pad = ((0, 0), (0, 1), (0, 0), (0, 0))
  full_B = jnp.full((B,), N, jnp.int32)
  kv_len_B = full_B if kv_len_B is None else kv_len_B.astype(jnp.int32)
  o = jax.nn.dot_product_attention(
      jnp.pad(q_BxNxHxK, pad), jnp.pad(k_BxNxHxK, pad), jnp.pad(v_BxNxHxK, pad),
      query_seq_lengths=full_B, key_value_seq_lengths=kv_len_B, implementation=implementation)
  return o[:, :N]


def _attention_probs(q_BxQxHxK, k_BxSxHxK, kv_len_B, scale):
  """float32 softmax(q.k * scale) over the keys, keys at or after `kv_len` excluded: [B,H,Q,S]."""
  logits = jnp.einsum("bqhk,bshk->bhqs", q_BxQxHxK, k_BxSxHxK,
                      preferred_element_type=jnp.float32) * scale
  if kv_len_B is not None:
    key_ok = jnp.arange(logits.shape[-1])[None, None, None, :] < kv_len_B[:, None, None, None]
    # Finite, as in jax.nn.dot_product_attention, so a row with no key is uniform, not NaN.
    logits = jnp.where(key_ok, logits, -0.7 * float(jnp.finfo(jnp.float32).max))
  logits = logits - jnp.max(logits, axis=-1, keepdims=True)
  e = jnp.exp(logits)
  return e / jnp.sum(e, axis=-1, keepdims=True)


def _attention_out(p_BxHxQxS, v_BxSxHxK):
  return jnp.einsum("bhqs,bshk->bqhk", p_BxHxQxS.astype(v_BxSxHxK.dtype), v_BxSxHxK,
                    preferred_element_type=jnp.float32).astype(v_BxSxHxK.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def einsum_attention(q_BxQxHxK: jax.Array, k_BxSxHxK: jax.Array, v_BxSxHxK: jax.Array,
                     kv_len_B: jax.Array | None, scale: float) -> jax.Array:
  """Softmax attention, `jax.nn.dot_product_attention`'s math, with a hand-written backward.

  Autodiff of the softmax keeps several [B, H, Q, S] arrays for the backward pass and walks
  them more often than needed; XLA:CPU is bound by that memory traffic. The backward here
  keeps only the probabilities P and uses flash attention's identity
  rowsum(dP * P) = rowsum(dO * O) (Dao et al. 2022), so dS = P * (dP - rowsum(dO * O)) costs
  one pass over [B, H, Q, S].

  Args:
    q_BxQxHxK, k_BxSxHxK, v_BxSxHxK: queries, keys, values (compute dtype).
    kv_len_B: int keys per row before padding, or None for all.
    scale: logit scale (1 / sqrt(head size)).

  Returns:
    [B, Q, H, K] in the dtype of v.
  """
  return _attention_out(_attention_probs(q_BxQxHxK, k_BxSxHxK, kv_len_B, scale), v_BxSxHxK)


def _einsum_attention_fwd(q, k, v, kv_len, scale):
  p = _attention_probs(q, k, kv_len, scale)
  o = _attention_out(p, v)
  return o, (q, k, v, kv_len, p, o)


def _einsum_attention_bwd(scale, res, do_BxQxHxK):
  q, k, v, kv_len, p_BxHxQxS, o_BxQxHxK = res
  dt = q.dtype
  f32 = dict(preferred_element_type=jnp.float32)
  dv = jnp.einsum("bhqs,bqhk->bshk", p_BxHxQxS.astype(dt), do_BxQxHxK, **f32).astype(v.dtype)
  dp_BxHxQxS = jnp.einsum("bqhk,bshk->bhqs", do_BxQxHxK, v, **f32)
  rowsum_BxHxQ = jnp.einsum("bqhk,bqhk->bhq", do_BxQxHxK.astype(jnp.float32),
                            o_BxQxHxK.astype(jnp.float32))
  ds = (p_BxHxQxS * (dp_BxHxQxS - rowsum_BxHxQ[..., None]) * scale).astype(dt)
  dq = jnp.einsum("bhqs,bshk->bqhk", ds, k, **f32).astype(q.dtype)
  dk = jnp.einsum("bhqs,bqhk->bshk", ds, q, **f32).astype(k.dtype)
  dlen = None if kv_len is None else np.zeros(kv_len.shape, jax.dtypes.float0)
  return dq, dk, dv, dlen


einsum_attention.defvjp(_einsum_attention_fwd, _einsum_attention_bwd)


@functools.lru_cache(maxsize=None)
def sincos_1d(length: int, dim: int) -> np.ndarray:
  """Fixed 1-D sin-cos positions (Vaswani et al. 2017; MAE's 1-D form), float32 [length, dim].

  A numpy constant, not a parameter: it is folded into the compiled program.
  """
  if dim % 2:
    raise ValueError(f"sin-cos positions need an even width, got {dim}")
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  angle = np.arange(length, dtype=np.float64)[:, None] * omega[None, :]
  return np.concatenate([np.sin(angle), np.cos(angle)], axis=1).astype(np.float32)


def layer_norm(width: int, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
  """A float32 LayerNorm (its output is float32 whatever its input)."""
  return nnx.LayerNorm(width, epsilon=LN_EPS, dtype=jnp.float32, param_dtype=jnp.float32,
                       rngs=rngs)


def dense(d_in: int, d_out: int, *, dtype: jnp.dtype, rngs: nnx.Rngs) -> nnx.Linear:
  """A Linear (`kernel`, `bias`) with float32 params computing in `dtype`."""
  return nnx.Linear(d_in, d_out, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=KERNEL_INIT, bias_init=nnx.initializers.zeros_init(), rngs=rngs)


class Attention(nnx.Module):
  """Multi-head self-attention; padding keys are excluded through `kv_len_B`."""

  def __init__(self, width: int, heads: int, *, dtype: jnp.dtype, impl: str | None,
               rngs: nnx.Rngs):
    if width % heads:
      raise ValueError(f"width {width} is not divisible by heads {heads}")
    self.heads = heads
    self.impl = impl
    self.qkv = dense(width, 3 * width, dtype=dtype, rngs=rngs)
    self.out = dense(width, width, dtype=dtype, rngs=rngs)

  def __call__(self, x_BxNxD: jax.Array, kv_len_B: jax.Array | None = None) -> jax.Array:
    B, N, D = x_BxNxD.shape
    qkv_BxNx3xHxK = self.qkv(x_BxNxD).reshape(B, N, 3, self.heads, D // self.heads)
    q, k, v = (qkv_BxNx3xHxK[:, :, i] for i in range(3))
    if self.impl == "einsum":
      kv_len_B = None if kv_len_B is None else kv_len_B.astype(jnp.int32)
      o_BxNxHxK = einsum_attention(q, k, v, kv_len_B, (D // self.heads) ** -0.5)
    elif self.impl == "cudnn":
      o_BxNxHxK = cudnn_attention(q, k, v, kv_len_B)
    else:
      o_BxNxHxK = jax.nn.dot_product_attention(
          q, k, v, key_value_seq_lengths=kv_len_B, implementation=self.impl)
    return self.out(o_BxNxHxK.reshape(B, N, D))


class Block(nnx.Module):
  """Pre-norm transformer block (ViT): x + Attn(LN(x)), then x + MLP(LN(x)), GELU MLP."""

  def __init__(self, width: int, heads: int, mlp_ratio: int, *, dtype: jnp.dtype,
               impl: str | None, rngs: nnx.Rngs):
    self.norm1 = layer_norm(width, rngs=rngs)
    self.attn = Attention(width, heads, dtype=dtype, impl=impl, rngs=rngs)
    self.norm2 = layer_norm(width, rngs=rngs)
    self.fc1 = dense(width, mlp_ratio * width, dtype=dtype, rngs=rngs)
    self.fc2 = dense(mlp_ratio * width, width, dtype=dtype, rngs=rngs)

  def __call__(self, x_BxNxD: jax.Array, kv_len_B: jax.Array | None = None) -> jax.Array:
    # The residual stream stays float32; only the branches run in the compute dtype.
    x_BxNxD = x_BxNxD + self.attn(self.norm1(x_BxNxD), kv_len_B).astype(jnp.float32)
    h = jax.nn.gelu(self.fc1(self.norm2(x_BxNxD)), approximate=False)
    return x_BxNxD + self.fc2(h).astype(jnp.float32)


class Stack(nnx.Module):
  """`depth` blocks followed by a final LayerNorm.

  With `scan` the blocks' params are stacked on a leading layer axis (created with
  `nnx.vmap`) and applied with `nnx.scan`, so the block is compiled once whatever the depth;
  `remat` wraps the block in `nnx.remat` so only block inputs are kept for the backward pass.
  """

  def __init__(self, width: int, depth: int, heads: int, mlp_ratio: int, *,
               dtype: jnp.dtype, impl: str | None, scan: bool, remat: bool, rngs: nnx.Rngs):
    if depth < 1:
      raise ValueError(f"a Stack needs depth >= 1, got {depth}")
    self.scan = scan
    self.remat = remat
    make = functools.partial(Block, width, heads, mlp_ratio, dtype=dtype, impl=impl)
    if scan:
      @nnx.split_rngs(splits=depth)
      @nnx.vmap(in_axes=(0,), out_axes=0)
      def make_stacked(r: nnx.Rngs) -> Block:
        return make(rngs=r)
      self.blocks = make_stacked(rngs)
    else:
      self.blocks = nnx.List([make(rngs=rngs) for _ in range(depth)])
    self.norm = layer_norm(width, rngs=rngs)

  def __call__(self, x_BxNxD: jax.Array, kv_len_B: jax.Array | None = None) -> jax.Array:
    """Returns the normed float32 token features [B, N, D]."""
    def apply(x, block):
      return block(x, kv_len_B)
    if self.remat:
      apply = nnx.remat(apply)
    x_BxNxD = x_BxNxD.astype(jnp.float32)
    if self.scan:
      x_BxNxD = nnx.scan(apply, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)(
          x_BxNxD, self.blocks)
    else:
      for block in self.blocks:
        x_BxNxD = apply(x_BxNxD, block)
    return self.norm(x_BxNxD)


class NormDense(nnx.Module):
  """LayerNorm + Dense: the token encoder used where a stack's depth is 0."""

  def __init__(self, d_in: int, d_out: int, *, dtype: jnp.dtype, rngs: nnx.Rngs):
    self.norm = layer_norm(d_in, rngs=rngs)
    self.proj = dense(d_in, d_out, dtype=dtype, rngs=rngs)

  def __call__(self, x_BxNxD: jax.Array, kv_len_B: jax.Array | None = None) -> jax.Array:
    del kv_len_B  # token-wise
    return self.proj(self.norm(x_BxNxD)).astype(jnp.float32)


def masked_mean(x_BxNxD: jax.Array, valid_BxN: jax.Array) -> jax.Array:
  """Mean over the valid tokens, float32 [B, D]; a row with none gives 0."""
  w_BxN = valid_BxN.astype(jnp.float32)
  total_BxD = jnp.einsum("bnd,bn->bd", x_BxNxD.astype(jnp.float32), w_BxN)
  return total_BxD / jnp.maximum(jnp.sum(w_BxN, axis=1), 1.0)[:, None]


def l2_normalize(x_BxD: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Unit-norm rows, float32."""
  x_BxD = x_BxD.astype(jnp.float32)
  return x_BxD * jax.lax.rsqrt(jnp.maximum(jnp.sum(x_BxD * x_BxD, -1, keepdims=True), eps**2))
