"""Per-device memory of the two SigLIP forms (`siglip.py`), read from the compiler."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from cgdmer_jax import siglip
from cgdmer_jax.train import sharding


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
  for impl in siglip.IMPLS:
    fn = siglip.siglip(impl)
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
