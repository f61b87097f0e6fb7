"""The trainer: the loop and the helpers that own its parts (see docs/ARCHITECTURE.md)."""
