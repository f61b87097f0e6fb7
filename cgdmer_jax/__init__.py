"""CG-DMER (Contrastive-Generative Disentangled Multimodal ECG Representation learning) in JAX.

`__version__` is the one place the version is written (setup.cfg reads it with
`version = attr: cgdmer_jax.__version__`). This module imports nothing at import time:
`import cgdmer_jax` loads neither JAX nor TensorFlow. `cgdmer_jax.load` (the pretrained-encoder
API, `inference.load`) is resolved on first use by the module `__getattr__` below, which is why
the import sits inside a function.

  >>> import cgdmer_jax
  >>> enc = cgdmer_jax.load("EXPORT_OR_HUB_FOLDER")  # doctest: +SKIP
  >>> enc.embed_ecg(x, fs=250, leads=["I", "II", "V1"])["embedding"]  # doctest: +SKIP
"""

__version__ = "0.1.0"

_LAZY = ("load",)


def __getattr__(name: str):
  if name in _LAZY:
    from cgdmer_jax import inference  # JAX starts here, on first use of the API
    return getattr(inference, name)
  raise AttributeError(f"module 'cgdmer_jax' has no attribute {name!r}")


def __dir__():
  return sorted(list(globals()) + list(_LAZY))
