"""Performance programs: step benchmark, step timing, FLOP counts, SigLIP memory, ST-MEM comparison.

Nothing in the trainer, the model or evaluation imports this package; it measures them.
"""
