"""The pure objective on REAL PTB-XL records with their reports: gradients, overfitting,
compile-once, ablation switches.

Records are read with `wfdb.rdsamp` from the embedded subset (`tests/data/ptbxl`) or else
the shared data folder, independently of the project's data pipeline. Reports are tokenised
ad hoc as UTF-8 bytes (id = byte + NUM_SPECIAL, vocab 261) between BOS and EOS. One train
step is compiled for the whole module (full model, 5 s crops, reports cut to 64 ids).
"""

import functools
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from cgdmer_jax import objective
from cgdmer_jax.data import features
from cgdmer_jax.train import val_loss
from configs import pretrain

REPO = pathlib.Path(__file__).resolve().parents[1]
ROOTS = [REPO / "tests" / "data" / "ptbxl",
         pathlib.Path(os.environ.get("CGDMER_SHARED_DATA", REPO.parent / "shared" / "data"))
         / "ptbxl"]
B, SECONDS, L, STEPS = 8, 5.0, 64, 300


def _config(variant="full"):
  config = pretrain.get_config(f"size=tiny,variant={variant}")
  config.data.seconds = SECONDS
  config.model.max_report_len = L
  config.model.vocab_size = features.NUM_SPECIAL + 256
  return config


def _load_ptbxl(n: int, fs: int = 100) -> dict:
  """The first n PTB-XL records (100 Hz) with a non-empty report, as a batch in mV."""
  pd = pytest.importorskip("pandas")
  wfdb = pytest.importorskip("wfdb")
  for root in ROOTS:
    if (root / "ptbxl_database.csv").exists():
      break
  else:
    pytest.skip(f"no PTB-XL copy found under {ROOTS}")
  db = pd.read_csv(root / "ptbxl_database.csv")
  T = int(fs * SECONDS)
  ecg, ids, lens = [], [], []
  for _, row in db.iterrows():
    if len(ecg) == n:
      break
    if not (root / f"{row.filename_lr}.hea").exists() or not str(row.report).strip():
      continue
    signal, fields = wfdb.rdsamp(str(root / row.filename_lr))
    assert fields["fs"] == fs and [s.upper() for s in fields["sig_name"]] == [
        s.upper() for s in features.LEADS]
    ecg.append(np.nan_to_num(signal[:T].T).astype(np.float32))
    tok = [features.BOS_ID] + [b + features.NUM_SPECIAL
                               for b in str(row.report).strip().encode()][:L - 2]
    tok.append(features.EOS_ID)
    ids.append(tok + [features.PAD_ID] * (L - len(tok)))
    lens.append(len(tok))
  if len(ecg) < n:
    pytest.skip(f"only {len(ecg)} PTB-XL records found under {root}")
  return dict(ecg=np.stack(ecg), lead_mask=np.ones((n, 12), bool),
              valid_len=np.full((n,), T, np.int32), report_ids=np.array(ids, np.int32),
              report_len=np.array(lens, np.int32), has_report=np.ones((n,), bool))


@pytest.fixture(scope="module")
def batch():
  return _load_ptbxl(B)


@pytest.fixture(scope="module")
def trained(batch):
  """Trains the full tiny model STEPS AdamW steps on one real batch (one compile)."""
  config = _config()
  graphdef, params = objective.init(config, seed=0)
  opt = optax.adamw(1e-3, weight_decay=0.0)
  traces = []

  @jax.jit
  def step(params, opt_state, batch, rng):
    traces.append(1)  # runs once per trace, i.e. per compile
    (loss, metrics), grads = jax.value_and_grad(objective.loss_fn, has_aux=True)(
        params, graphdef, batch, rng, config)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics, grads

  eval_loss = jax.jit(functools.partial(objective.loss_fn, graphdef=graphdef, config=config))
  eval_rng = jax.random.key(123)  # the same masks before and after training
  before = eval_loss(params, batch=batch, rng=eval_rng)[1]
  opt_state = opt.init(params)
  key = jax.random.key(0)
  first_grads = None
  for i in range(STEPS):
    params, opt_state, _, grads = step(params, opt_state, batch, jax.random.fold_in(key, i))
    if first_grads is None:
      first_grads = grads
  after = eval_loss(params, batch=batch, rng=eval_rng)[1]
  return dict(config=config, graphdef=graphdef, params=params, before=before, after=after,
              first_grads=first_grads, traces=len(traces), cache=step._cache_size())


def test_batch_is_real(batch):
  assert batch["ecg"].shape == (B, 12, int(100 * SECONDS))
  assert np.abs(batch["ecg"]).max() > 0.3   # millivolts: QRS complexes are there
  assert (batch["report_len"] > 5).all()


def test_every_param_gets_finite_nonzero_grad(trained):
  dead = []
  for path, g in nnx.to_flat_state(trained["first_grads"]):
    g = np.asarray(g.get_value())
    assert np.isfinite(g).all(), path
    # Stacked (scanned) layers: every layer of the stack, not just the stack as a whole.
    per_layer = g.reshape(g.shape[0], -1) if "blocks" in map(str, path) else g.reshape(1, -1)
    if not (np.abs(per_layer).max(axis=1) > 0).all():
      dead.append("/".join(map(str, path)))
  assert not dead, dead


def test_overfits_real_batch(trained):
  before, after = trained["before"], trained["after"]
  report = {k: (float(before[k]), float(after[k])) for k in before}
  assert float(after["loss"]) < 0.3 * float(before["loss"]), report
  # Each active term is learnt, not just the easiest one.
  assert float(after["loss/contrastive"]) < 0.3 * float(before["loss/contrastive"]), report
  assert float(after["loss/text"]) < 0.7 * float(before["loss/text"]), report
  # Predicting zeros scores ~1.0 on the per-patch normalised target: below that the decoder
  # reads the visible tokens (leads are strongly correlated), not just the target's mean.
  assert float(after["loss/ecg"]) < 0.9, report


def test_compiles_once(trained):
  assert trained["traces"] == 1 and trained["cache"] == 1


def test_encoders_after_training_retrieve_pairs(trained, batch):
  enc_ecg = objective.encode_ecg_fn(trained["graphdef"], trained["config"])
  enc_txt = objective.encode_text_fn(trained["graphdef"], trained["config"])
  e = enc_ecg(trained["params"], batch["ecg"], batch["valid_len"], batch["lead_mask"])
  t = enc_txt(trained["params"], batch["report_ids"], batch["report_len"])
  assert trained["config"].model.probe_features == "shared"
  np.testing.assert_array_equal(e["probe"], e["shared"])
  sim = np.asarray(e["embedding"] @ t["embedding"].T)
  # Unmasked inputs at evaluation (trained on masked ones, FLIP-style): most pairs match.
  assert np.mean(sim.argmax(1) == np.arange(B)) >= 0.5, sim.round(2)


def test_contrastive_variant_removes_generative_terms(batch):
  config = _config("contrastive")
  graphdef, params = objective.init(config, seed=0)
  paths = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(params)}
  assert not any(p.startswith(("ecg_decoder", "text_head")) for p in paths)
  (loss, metrics), grads = jax.jit(
      jax.value_and_grad(functools.partial(objective.loss_fn, graphdef=graphdef,
                                           config=config), has_aux=True))(
          params, batch=batch, rng=jax.random.key(0))
  assert set(metrics) == {"loss", "loss/contrastive", "siglip/temperature", "siglip/bias"}
  np.testing.assert_allclose(loss, metrics["loss/contrastive"])
  # The specific encoders feed only the (switched-off) decoders and disentanglement.
  for path, g in nnx.to_flat_state(grads):
    g = np.asarray(g.get_value())
    name = "/".join(map(str, path))
    if "specific" in name:
      assert (g == 0).all(), name
    elif name.startswith(("ecg/backbone", "text/backbone", "disentangle/shared")):
      assert np.abs(g).max() > 0, name


def test_ecg_mask_only_never_builds_text(batch):
  config = _config("ecg_mask_only")
  graphdef, params = jax.eval_shape(lambda: objective.init(config, 0))
  paths = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(params)}
  assert not any(p.startswith(("text", "siglip", "disentangle/text")) for p in paths)
  loss, metrics = jax.eval_shape(
      functools.partial(objective.loss_fn, graphdef=graphdef, config=config),
      params, batch=batch, rng=jax.random.key(0))
  assert set(metrics) == {"loss", "loss/ecg", "ecg_mse/random", "ecg_mse/lead", "ecg_mse/time"}
  with pytest.raises(ValueError, match="no report tower"):
    nnx.merge(graphdef, params).encode_text(batch["report_ids"], batch["report_len"])


def test_bf16_unrolled_remat_options(batch, trained):
  """bfloat16 compute with unrolled, rematerialised layers: the loss runs and is finite;
  gradients (traced only, to save a compile) are float32 like the params."""
  config = _config()
  config.model.update(dtype="bfloat16", scan_layers=False, remat=True)
  graphdef, params = objective.init(config, seed=0)
  fn = functools.partial(objective.loss_fn, graphdef=graphdef, config=config)
  loss, metrics = jax.jit(fn)(params, batch=batch, rng=jax.random.key(123))
  assert all(v.dtype == jnp.float32 for v in metrics.values())
  assert np.isfinite(float(loss))
  # Same masks as the float32 model's initial loss; the init differs (unrolled layers draw
  # their own weights), so only the scale is compared.
  assert 0.7 < float(loss) / float(trained["before"]["loss"]) < 1.4
  grads = jax.eval_shape(jax.grad(lambda p: fn(p, batch=batch, rng=jax.random.key(0))[0]),
                         params)
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))


def test_val_coupled_terms_average_full_batches_only(monkeypatch):
  config = pretrain.get_config("size=tiny")
  config.data.batch_size = config.data.eval_batch_size = 4
  sizes = [4, 4, 2]  # the last batch is short: fewer SigLIP negatives
  values = [1.0, 1.0, 10.0]
  monkeypatch.setattr(val_loss, "eval_stream", lambda config, split: iter(range(3)))
  monkeypatch.setattr(val_loss.sharding, "global_batch", lambda local, mesh: local)

  def step(params, i):
    return {"loss/ecg": values[i], "loss/contrastive": values[i],
            "loss/disentangle": values[i], "loss": values[i], "rows": float(sizes[i])}
  out = val_loss.evaluate_loss(None, step, config, None, "val")
  assert out["val/loss/ecg"] == pytest.approx((4 + 4 + 20) / 10)  # per example: every row
  for k in ("loss/contrastive", "loss/disentangle", "loss"):
    assert out[f"val/{k}"] == pytest.approx(1.0)
  # No full batch at all: every batch counts (and a warning says so).
  sizes[:] = [2, 2, 2]
  out = val_loss.evaluate_loss(None, step, config, None, "val")
  assert out["val/loss/contrastive"] == pytest.approx(4.0)
