"""SigLIP's chunked loss for large global batches, and the memory probe that compares it.

`losses.siglip_loss` is written on the global batch: under jit with the batch sharded, XLA
gathers every report embedding onto every device and each device builds a [B/n, B] block of
the logits (plus its gradient): at a global batch of tens of thousands that block is the
memory wall. The chunked form of the SigLIP paper (Zhai et al. 2023, Sec. 3.3) never holds
more than one [B/n, B/n] block: under `jax.shard_map` each device scores its own ECG
embeddings against the report embeddings of one device at a time, the report block moving
one step around a ring of all batch-sharding devices with `jax.lax.ppermute` (n - 1 moves).
The sum over blocks is the same loss; autodiff sends each report block's gradient back
around the ring (the transpose of a ppermute is the reverse ppermute), and
`jax.checkpoint` recomputes each block's logits in the backward pass instead of keeping n of
them alive.

Both forms weight pair (i, j) by valid_i * valid_j and divide by the number of valid rows, so
rows without a report and eval padding rows count for nothing in either.

`config.loss.siglip_impl` chooses ('all_gather', the default, or 'chunked'); the ring is every
mesh axis the batch is sharded over (`sharding.DATA_AXES`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from cgdmer_jax import sharding

IMPLS = ("all_gather", "chunked")


def _block_loss(zimg_bxD, ztxt_bxD, temp, bias, valid_img_b, valid_txt_b, diagonal):
  """-sum log sigmoid(label * logit) over one [b, b] block, pairs weighted by validity."""
  logits_bxb = temp * jnp.einsum("id,jd->ij", zimg_bxD, ztxt_bxD) + bias
  b = zimg_bxD.shape[0]
  # +1 on the diagonal of the device's own block (step 0 of the ring), -1 everywhere else.
  labels_bxb = jnp.where(diagonal, 2.0 * jnp.eye(b, dtype=jnp.float32) - 1.0, -1.0)
  pair_w_bxb = valid_img_b[:, None] * valid_txt_b[None, :]
  return -jnp.sum(pair_w_bxb * jax.nn.log_sigmoid(labels_bxb * logits_bxb))


def _ring_axes(mesh) -> tuple[str, ...]:
  return tuple(a for a in sharding.DATA_AXES if a in mesh.axis_names)


def siglip_loss_chunked(zimg_BxD: jax.Array, ztxt_BxD: jax.Array, log_temp: jax.Array,
                        bias: jax.Array, valid_B: jax.Array | None = None,
                        *, mesh: jax.sharding.Mesh | None = None) -> jax.Array:
  """`losses.siglip_loss`, computed block by block around the ring of batch-sharding devices.

  Args:
    zimg_BxD: unit-norm ECG embeddings of the global batch (sharded on the batch axes).
    ztxt_BxD: unit-norm report embeddings, row i paired with ECG i.
    log_temp: scalar log temperature.
    bias: scalar bias.
    valid_B: bool, False for rows without a report (or batch padding); None = all.
    mesh: the ('data', 'fsdp') mesh; None = the mesh set by `jax.set_mesh`. Without a mesh of
      more than one device the plain loss is the same computation and is used.

  Returns:
    float32 scalar, equal to `losses.siglip_loss` up to float round-off.
  """
  from cgdmer_jax import losses  # pylint: disable=g-import-not-at-top
  if mesh is None:
    mesh = jax.sharding.get_abstract_mesh()
  axes = _ring_axes(mesh) if mesh is not None and not mesh.empty else ()
  n = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
  if n == 1:
    return losses.siglip_loss(zimg_BxD, ztxt_BxD, log_temp, bias, valid_B)
  B = zimg_BxD.shape[0]
  if B % n:
    raise ValueError(f"global batch {B} is not divisible by the {n} devices of the ring")
  valid = (jnp.ones((B,), jnp.float32) if valid_B is None
           else valid_B.astype(jnp.float32))
  # Device k sends its report block to device k + 1: after s moves a device holds the block
  # of device k - s. The order does not matter for the sum; the ring only needs a cycle.
  perm = [(k, (k + 1) % n) for k in range(n)]
  block = jax.checkpoint(_block_loss, static_argnums=(6,))

  @functools.partial(jax.shard_map, mesh=mesh,
                     in_specs=(P(axes), P(axes), P(), P(), P(axes)), out_specs=P())
  def ring(zimg_bxD, ztxt_bxD, log_temp, bias, valid_b):
    zimg_bxD = zimg_bxD.astype(jnp.float32)
    ztxt_bxD = ztxt_bxD.astype(jnp.float32)
    temp = jnp.exp(log_temp)
    own = block(zimg_bxD, ztxt_bxD, temp, bias, valid_b, valid_b, True)

    def step(carry, _):
      txt_bxD, vtxt_b, total = carry
      txt_bxD = jax.lax.ppermute(txt_bxD, axes, perm)
      vtxt_b = jax.lax.ppermute(vtxt_b, axes, perm)
      total = total + block(zimg_bxD, txt_bxD, temp, bias, valid_b, vtxt_b, False)
      return (txt_bxD, vtxt_b, total), None

    (_, _, total), _ = jax.lax.scan(step, (ztxt_bxD, valid_b, own), None, length=n - 1)
    total = jax.lax.psum(total, axes)
    count = jax.lax.psum(jnp.sum(valid_b), axes)
    return total / jnp.maximum(count, 1.0)

  return ring(zimg_BxD, ztxt_BxD, jnp.asarray(log_temp, jnp.float32),
              jnp.asarray(bias, jnp.float32), valid)


def siglip(impl: str):
  """The SigLIP loss function of `config.loss.siglip_impl`."""
  from cgdmer_jax import losses  # pylint: disable=g-import-not-at-top
  if impl == "all_gather":
    return losses.siglip_loss
  if impl == "chunked":
    return siglip_loss_chunked
  raise ValueError(f"unknown loss.siglip_impl {impl!r}; known: {IMPLS}")


def memory_report(mesh: jax.sharding.Mesh, global_batch: int, dim: int) -> dict[str, dict]:
  """Per-device memory of SigLIP loss + gradients, both implementations, from the compiler.

  Compiles (does not run) `value_and_grad` of each form with the embeddings sharded on the
  batch axes of `mesh` and reads `compiled.memory_analysis()` (on CPU the only memory
  statistic there is; it is the compiler's buffer assignment, the same on any backend).

  Args:
    mesh: the mesh (its batch-sharding axes form the ring).
    global_batch: B.
    dim: embedding width.

  Returns:
    {impl: {temp_bytes, argument_bytes, output_bytes, peak_bytes}} per device.
  """
  batch_sh = sharding.batch_sharding(mesh)
  rep = sharding.replicated(mesh)
  emb = jax.ShapeDtypeStruct((global_batch, dim), jnp.float32, sharding=batch_sh)
  valid = jax.ShapeDtypeStruct((global_batch,), jnp.bool_, sharding=batch_sh)
  scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=rep)
  out = {}
  for impl in IMPLS:
    fn = siglip(impl)
    if impl == "chunked":
      fn = functools.partial(fn, mesh=mesh)
    grad = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3)))
    with jax.set_mesh(mesh):
      mem = grad.lower(emb, emb, scalar, scalar, valid).compile().memory_analysis()
    temp, arg, res = (int(getattr(mem, f"{k}_size_in_bytes", 0))
                      for k in ("temp", "argument", "output"))
    alias = int(getattr(mem, "alias_size_in_bytes", 0))
    out[impl] = dict(temp_bytes=temp, argument_bytes=arg, output_bytes=res,
                     peak_bytes=temp + arg + res - alias)
  return out
