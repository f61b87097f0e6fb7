"""Full fine-tuning of a pretrained ECG encoder on the MERL tasks (`python -m cgdmer_jax.finetune`).

config (settings and their defaults), data (records staged once into memory-mapped arrays),
custom (a user's own labelled folder), model (encoder + linear head, layer-wise learning
rates, freezing, the pure steps), loop (epochs, early stopping, checkpoints), runner (models x
tasks x fractions, results in `evaluate`'s format).
"""
