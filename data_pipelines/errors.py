"""The converter's record-level error, below every module that raises it (signal, sources)."""


class Rejected(Exception):
  """A record that cannot be converted; the message is the manifest's `reason`."""
