"""Pretraining on several converted datasets: weights, one tokenizer, ECG-only rows."""

import csv

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgdmer_jax import objective
from cgdmer_jax.data import mixture
from cgdmer_jax.data import reader
from cgdmer_jax.train import loop
from configs import pretrain
from data_pipelines import signal
from data_pipelines import write
from tests import conftest
from tests import test_train


def _build(out, source, input_dir, **kw):
  write.build(write.BuildConfig(source=source, input=str(input_dir), output=str(out),
                                signal=signal.Config(fs=100, seconds=10.0), workers=1,
                                progress=False, **kw))
  return out


@pytest.fixture(scope="module")
def ecg_only(tmp_path_factory):
  """The embedded CPSC2018 records (no reports), all in train, at the PTB-XL sample's shape."""
  return _build(tmp_path_factory.mktemp("cpsc"), "cinc", conftest.EMBEDDED / "cpsc2018" / "wfdb",
                split_mode="hash", val_fraction=0.0, test_fraction=0.0, shards=1)


def _rows(sources, steps, **kw):
  it = mixture.train_batches(sources, global_batch_size=16, seed=3, shuffle_buffer=64,
                             process_index=0, process_count=1, with_record_id=True, **kw)
  return [next(it) for _ in range(steps)]


def test_weights_respected_and_ecg_only_rows_flagged(ptbxl_tfrecords, ecg_only):
  cpsc_ids = {r["record"] for r in _manifest(ecg_only) if r["status"] == "written"}
  sources = [mixture.Source(str(ptbxl_tfrecords), 3.0), mixture.Source(str(ecg_only), 1.0)]
  batches = _rows(sources, 40)
  ids = np.concatenate([b["record_id"] for b in batches])
  from_cpsc = np.isin(ids, sorted(cpsc_ids))
  # 640 draws at p = 0.25: the fraction lies within 3 standard deviations (0.05).
  assert abs(from_cpsc.mean() - 0.25) < 0.05, from_cpsc.mean()
  has_report = np.concatenate([b["has_report"] for b in batches])
  report_len = np.concatenate([b["report_len"] for b in batches])
  assert not has_report[from_cpsc].any() and np.all(report_len[from_cpsc] == 0)
  assert has_report[~from_cpsc].all()
  # Deterministic, and resuming at step k gives the stream from batch k on.
  again = _rows(sources, 12)
  resumed = _rows(sources, 4, start_step=8)
  for a, b in zip(batches[:12], again):
    np.testing.assert_array_equal(a["record_id"], b["record_id"])
  for a, b in zip(batches[8:12], resumed):
    np.testing.assert_array_equal(a["ecg"], b["ecg"])


def _manifest(data_dir):
  with open(data_dir / "manifest.csv", newline="") as f:
    return list(csv.DictReader(f))


def test_weights_by_size_and_config_parsing(ptbxl_tfrecords, ecg_only):
  config = pretrain.get_config("size=tiny")
  config.data.dir = str(ptbxl_tfrecords)
  config.data.mix = f"{ecg_only}"
  sources = mixture.sources_of(config)
  assert [s.weight for s in sources] == [None, None]
  infos = [reader.load_info(s.data_dir) for s in sources]
  sizes = np.asarray([i.split_sizes["train"] for i in infos], float)
  np.testing.assert_allclose(mixture.weights(sources, infos, "train"), sizes / sizes.sum())
  config.data.mix = f"{ecg_only}:0.5"
  with pytest.raises(ValueError, match="give a weight to every dataset"):
    mixture.sources_of(config)
  config.data.weight = 1.5
  w = mixture.weights(mixture.sources_of(config), infos, "train")
  np.testing.assert_allclose(w, [0.75, 0.25])


def test_a_second_tokenizer_is_refused_naming_both(ptbxl_tfrecords, tmp_path):
  other = _build(tmp_path / "ptbxl_v300", "ptbxl", conftest.EMBEDDED / "ptbxl", vocab_size=300,
                 shards=2)
  infos = [reader.load_info(ptbxl_tfrecords), reader.load_info(other)]
  with pytest.raises(ValueError, match="--tokenizer=") as e:
    mixture.check(infos, "train")
  assert str(ptbxl_tfrecords) in str(e.value) and str(other) in str(e.value)
  # Built with the primary's tokenizer, the same corpus mixes.
  same = _build(tmp_path / "ptbxl_same", "ptbxl", conftest.EMBEDDED / "ptbxl", shards=2,
                tokenizer=reader.load_info(ptbxl_tfrecords).tokenizer_path)
  mixture.check([infos[0], reader.load_info(same)], "train")


def test_ecg_only_rows_give_no_report_or_contrastive_term(ptbxl_tfrecords, ecg_only):
  config = test_train.tiny_config(ptbxl_tfrecords)
  loop.apply_dataset_info(config, reader.load_info(config.data.dir))
  sources = [mixture.Source(str(ptbxl_tfrecords), 1.0), mixture.Source(str(ecg_only), 1.0)]
  batch = next(mixture.train_batches(sources, global_batch_size=16, seed=0, shuffle_buffer=64,
                                     process_index=0, process_count=1))
  ecg_only_rows = np.flatnonzero(~batch["has_report"])
  assert 0 < len(ecg_only_rows) < 16
  graphdef, params = objective.init(config, 0)
  fn = jax.jit(lambda p, b: objective.loss_fn(p, graphdef, b, jax.random.key(0), config)[1])
  terms = lambda b: fn(params, b)  # noqa: E731
  base = terms({k: jnp.asarray(v) for k, v in batch.items()})
  changed = dict(batch)
  changed["ecg"] = batch["ecg"].copy()
  changed["ecg"][ecg_only_rows] = batch["ecg"][ecg_only_rows][:, ::-1] * 3.0
  after = terms({k: jnp.asarray(v) for k, v in changed.items()})
  # Their ECGs are no SigLIP negatives and no report is reconstructed for them ...
  assert float(after["loss/contrastive"]) == pytest.approx(float(base["loss/contrastive"]),
                                                           rel=1e-6)
  assert float(after["loss/text"]) == pytest.approx(float(base["loss/text"]), rel=1e-6)
  # ... but they do feed the masked-ECG term.
  assert abs(float(after["loss/ecg"]) - float(base["loss/ecg"])) > 1e-4


def test_draw_counts_match_the_drawn_stream():
  # `draws_before` (what a resume computes) counts exactly the draws the stream makes.
  w = np.asarray([3.0, 1.0, 0.5])
  drawn = np.fromiter(mixture._choices(w, 9, 0).take(3 * mixture.DRAW_BLOCK + 17)
                      .as_numpy_iterator(), np.int64)
  for p in (0, 5, mixture.DRAW_BLOCK, 2 * mixture.DRAW_BLOCK + 3, len(drawn)):
    np.testing.assert_array_equal(mixture.draws_before(w, 9, p),
                                  np.bincount(drawn[:p], minlength=3))
  resumed = np.fromiter(mixture._choices(w, 9, 5000).take(100).as_numpy_iterator(), np.int64)
  np.testing.assert_array_equal(resumed, drawn[5000:5100])
  assert abs(np.mean(drawn == 0) - 3.0 / 4.5) < 0.02
