"""The SigLIP loss in its two forms, and the choice between them (`config.loss.siglip_impl`).

`siglip_loss` is written on the global batch: under jit with the batch sharded, XLA gathers
every report embedding onto every device and each device builds a [B/n, B] block of the
logits (plus its gradient): at a global batch of tens of thousands that block is the memory
wall. `siglip_loss_chunked` is the chunked form of the SigLIP paper (Zhai et al. 2023, Sec.
3.3) and never holds more than one [B/n, B/n] block: under `jax.shard_map` each device scores
its own ECG embeddings against the report embeddings of one device at a time, the report block
moving one step around a ring of all the mesh's devices with `jax.lax.ppermute` (n - 1
moves). The sum over blocks is the same loss; autodiff sends each report block's gradient back
around the ring (the transpose of a ppermute is the reverse ppermute), and `jax.checkpoint`
recomputes each block's logits in the backward pass instead of keeping n of them alive.

Both forms weight pair (i, j) by valid_i * valid_j and divide by the number of valid rows, so
rows without a report and eval padding rows count for nothing in either. Both take the
temperature itself (the model exponentiates its learnable log temperature once).

`siglip(impl)` returns the form of `config.loss.siglip_impl` ('all_gather', the default, or
'chunked'). The ring runs over every axis of the mesh: the trainer's mesh has only the axes
the batch is sharded over ('data', 'fsdp'). `perf/siglip_memory.py` compares the two forms'
memory.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

IMPLS = ("all_gather", "chunked")


def siglip_loss(zimg_BxD: jax.Array, ztxt_BxD: jax.Array, temperature: jax.Array,
                bias: jax.Array, valid_B: jax.Array | None = None) -> jax.Array:
  """Pairwise sigmoid loss (SigLIP, Zhai et al. ICCV 2023) on the whole batch.

  logit_ij = temperature * <zimg_i, ztxt_j> + bias, label +1 for i == j and -1 otherwise;
  loss = -(1/|rows|) sum_i sum_j log sigmoid(label_ij * logit_ij), rows and columns restricted
  to the valid pairs (records with a report).

  Args:
    zimg_BxD: unit-norm ECG embeddings of the global batch.
    ztxt_BxD: unit-norm report embeddings, row i paired with ECG i.
    temperature: positive scalar (exp of the learnable log temperature).
    bias: scalar bias.
    valid_B: bool, False for rows without a report (or batch padding); None = all.

  Returns:
    float32 scalar.
  """
  B = zimg_BxD.shape[0]
  logits_BxB = (temperature * jnp.einsum("id,jd->ij", zimg_BxD.astype(jnp.float32),
                                         ztxt_BxD.astype(jnp.float32)) + bias)
  labels_BxB = 2.0 * jnp.eye(B, dtype=jnp.float32) - 1.0
  valid = jnp.ones((B,), jnp.float32) if valid_B is None else valid_B.astype(jnp.float32)
  pair_w_BxB = valid[:, None] * valid[None, :]
  per_row_B = -jnp.sum(pair_w_BxB * jax.nn.log_sigmoid(labels_BxB * logits_BxB), axis=1)
  return jnp.sum(per_row_B) / jnp.maximum(jnp.sum(valid), 1.0)


def _block_loss(zimg_bxD, ztxt_bxD, temp, bias, valid_img_b, valid_txt_b, diagonal):
  """-sum log sigmoid(label * logit) over one [b, b] block, pairs weighted by validity."""
  logits_bxb = temp * jnp.einsum("id,jd->ij", zimg_bxD, ztxt_bxD) + bias
  b = zimg_bxD.shape[0]
  # +1 on the diagonal of the device's own block (step 0 of the ring), -1 everywhere else.
  labels_bxb = jnp.where(diagonal, 2.0 * jnp.eye(b, dtype=jnp.float32) - 1.0, -1.0)
  pair_w_bxb = valid_img_b[:, None] * valid_txt_b[None, :]
  return -jnp.sum(pair_w_bxb * jax.nn.log_sigmoid(labels_bxb * logits_bxb))


def siglip_loss_chunked(zimg_BxD: jax.Array, ztxt_BxD: jax.Array, temperature: jax.Array,
                        bias: jax.Array, valid_B: jax.Array | None = None,
                        *, mesh: jax.sharding.Mesh | None = None) -> jax.Array:
  """`siglip_loss`, computed block by block around the ring of the mesh's devices.

  Args:
    zimg_BxD: unit-norm ECG embeddings of the global batch (sharded on the batch axes).
    ztxt_BxD: unit-norm report embeddings, row i paired with ECG i.
    temperature: positive scalar.
    bias: scalar bias.
    valid_B: bool, False for rows without a report (or batch padding); None = all.
    mesh: the mesh whose axes shard the batch; None = the mesh set by `jax.set_mesh`. Without
      a mesh of more than one device the plain loss is the same computation and is used.

  Returns:
    float32 scalar, equal to `siglip_loss` up to float round-off.
  """
  if mesh is None:
    mesh = jax.sharding.get_abstract_mesh()
  axes = tuple(mesh.axis_names) if mesh is not None and not mesh.empty else ()
  n = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
  if n == 1:
    return siglip_loss(zimg_BxD, ztxt_BxD, temperature, bias, valid_B)
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
  def ring(zimg_bxD, ztxt_bxD, temp, bias, valid_b):
    zimg_bxD = zimg_bxD.astype(jnp.float32)
    ztxt_bxD = ztxt_bxD.astype(jnp.float32)
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

  return ring(zimg_BxD, ztxt_BxD, jnp.asarray(temperature, jnp.float32),
              jnp.asarray(bias, jnp.float32), valid)


def siglip(impl: str):
  """The SigLIP loss function of `config.loss.siglip_impl`.

  Args:
    impl: 'all_gather' or 'chunked'.

  Returns:
    `siglip_loss` or `siglip_loss_chunked` (same signature).
  """
  if impl == "all_gather":
    return siglip_loss
  if impl == "chunked":
    return siglip_loss_chunked
  raise ValueError(f"unknown loss.siglip_impl {impl!r}; known: {IMPLS}")
