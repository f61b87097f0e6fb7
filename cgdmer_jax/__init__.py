"""CG-DMER (Contrastive-Generative Disentangled Multimodal ECG Representation learning) in JAX.

`__version__` is the one place the version is written (setup.cfg reads it with
`version = attr: cgdmer_jax.__version__`). This module imports nothing: `import cgdmer_jax`
loads neither JAX nor TensorFlow.
"""

__version__ = "0.1.0"
