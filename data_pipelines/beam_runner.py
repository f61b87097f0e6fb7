"""The optional Apache Beam runner of the converter's conversion stage (`--runner=beam`).

`write.build` does everything else (listing, plan, tokenizer, resume state, metadata) the same
way for both runners; this module only converts the pending `ShardTask`s, one Beam element per
shard: `Create(tasks) | ParDo(_ConvertShard)`, whose DoFn initialises a worker once
(`shard_worker.init_worker` in `setup`) and calls `shard_worker.convert_shard` per element.

Why this is safe under Beam's at-least-once execution: a shard's bytes depend only on its
task, and a shard is committed by its manifest part, written after it (`shard_worker`'s
protocol), so a retried or duplicated element rewrites identical bytes and a failed one leaves
no complete-looking shard. Files are written as with the local runner (`tfrecord`: a rename on
a local path, one object write on a `gs://` URL): every worker must see the output under the
same path or URL (one machine, a shared filesystem, or a bucket), and the input folder under
the same local path.

apache_beam is the `[beam]` extra, imported only when this runner is chosen.
"""

from __future__ import annotations

import shlex
from typing import Callable
from typing import Sequence

from absl import logging

from data_pipelines import shard_worker

INSTALL_HINT = ("--runner=beam needs Apache Beam, which is not installed: "
                "pip install -e '.[beam]' (it downgrades protobuf to 6.x; see docs/DATA.md)")


class BeamNotInstalledError(ImportError):
  """apache_beam cannot be imported (the optional [beam] extra is missing)."""


def _import_beam():
  try:
    import apache_beam
  except ImportError as e:
    raise BeamNotInstalledError(INSTALL_HINT) from e
  return apache_beam


def make_runner(beam_options: str
                ) -> Callable[[shard_worker.WorkerSpec, Sequence], tuple[int, None]]:
  """A conversion function running on Beam, checked now so a bad setup fails before any work.

  Args:
    beam_options: Beam pipeline flags as one shell-quoted string, e.g. "--runner=FlinkRunner
      --flink_master=host:8081"; empty: the DirectRunner with its defaults.

  Returns:
    `run(spec, pending_tasks) -> (records converted, None)`, like the local process pool
    (which returns its workers' busy seconds where this has None).

  Raises:
    BeamNotInstalledError: apache_beam is not installed.
    ValueError: `beam_options` is not a valid shell-quoted string or names an unknown runner.
  """
  beam = _import_beam()
  from apache_beam.options import pipeline_options
  try:
    args = shlex.split(beam_options)
  except ValueError as e:
    raise ValueError(f"--beam_options {beam_options!r}: {e}") from e
  options = pipeline_options.PipelineOptions(args)
  runner_name = options.view_as(pipeline_options.StandardOptions).runner or "DirectRunner"
  # Resolved now: a misspelt runner is a usage error, not a failure after the listing.
  runner = beam.runners.create_runner(runner_name)

  def run(spec: shard_worker.WorkerSpec, pending: Sequence[shard_worker.ShardTask]
          ) -> tuple[int, None]:
    # (records converted, None: the workers' busy time is the runner's UI's business)
    if not pending:
      return 0, None
    logging.info("Converting %d shards with Beam's %s", len(pending), runner_name)
    # Leaving the `with` block runs the pipeline and waits for it; a failed pipeline raises.
    with beam.Pipeline(runner=runner, options=options) as p:
      _ = (p | "Shards" >> beam.Create(list(pending))
           | "Convert" >> beam.ParDo(_convert_shard_fn(beam, spec)))
    # The driver checks the shared output itself: a runner whose workers wrote elsewhere (a
    # worker-local disk) would otherwise end "successfully" with shards missing here.
    missing = [t.filename for t in pending if not shard_worker.is_complete(spec.output, t)]
    if missing:
      raise RuntimeError(
          f"the Beam pipeline finished but {len(missing)} shards are not in {spec.output} "
          f"(e.g. {missing[0]}): the workers must write to the same filesystem path")
    return sum(len(t.refs) for t in pending), None

  return run


def _convert_shard_fn(beam, spec: shard_worker.WorkerSpec):
  """The DoFn instance (its class needs apache_beam, so it is built here, not at import)."""

  class _ConvertShard(beam.DoFn):
    """One element = one `ShardTask`; outputs its counts ({'records', 'written', 'bytes'})."""

    def __init__(self, worker_spec: shard_worker.WorkerSpec):
      super().__init__()
      self._spec = worker_spec

    def setup(self):
      # Once per DoFn instance. A worker process may hold several (one per thread): each
      # rebuilds shard_worker's single per-process state from the same spec, and the threads
      # then share it (byte-identical output checked with the multi_threading DirectRunner).
      shard_worker.init_worker(self._spec)

    def process(self, task):
      counts = shard_worker.convert_shard(task)
      for name, value in counts.items():  # shown by the runner's UI while the job runs
        beam.metrics.Metrics.counter("cgdmer_convert", name).inc(value)
      yield counts

  return _ConvertShard(spec)
