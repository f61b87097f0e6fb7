"""Model structure, output shapes and the visible-only ECG encoder (tiny config, CPU).

Shapes come from `jax.eval_shape` (tracing only, no compile); the numeric checks run the
small ECG encoder eagerly.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cgdmer_jax import masking
from cgdmer_jax import objective
from cgdmer_jax.models import cgdmer
from cgdmer_jax.models import ecg
from cgdmer_jax.models import layers
from cgdmer_jax.models import patching
from configs import common
from configs import pretrain

B = 2


def _config(variant="full", **model):
  config = pretrain.get_config(f"size=tiny,variant={variant}")
  for k, v in model.items():
    config.model[k] = v
  return config


def _batch(config, seed=0):
  rng = np.random.default_rng(seed)
  batch = objective.dummy_batch(config, B)
  batch["ecg"] = rng.normal(size=batch["ecg"].shape).astype(np.float32)
  batch["report_ids"][:, 0] = 2
  batch["report_ids"][:, 1:11] = rng.integers(5, config.model.vocab_size, (B, 10))
  batch["report_ids"][:, 11] = 3
  batch["report_len"][:] = 12
  batch["has_report"][:] = True
  return batch


def _forward_shapes(config):
  """eval_shape of (init, sample masks, forward): output ShapeDtypeStructs, no compile."""
  batch = _batch(config)

  def run():
    model = cgdmer.CGDMER(config, rngs=nnx.Rngs(0))
    return model(batch, masking.sample_masks(jax.random.key(0), batch, config))
  return jax.eval_shape(run)


@functools.lru_cache(maxsize=None)
def _param_paths(variant):
  _, params = jax.eval_shape(lambda: objective.init(_config(variant), 0))
  return {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(params)}


def test_full_outputs_shapes_and_dtypes():
  config = _config()
  c = masking.ecg_mask_counts(config)
  K = masking.num_text_slots(config)
  S, E, P = config.model.ecg_width, config.model.embed_dim, config.model.patch_size
  want = {
      "ecg/shared": (B, S), "ecg/specific": (B, config.model.ecg_width),
      "text/shared": (B, S), "text/specific": (B, config.model.text_width),
      "ecg/embedding": (B, E), "text/embedding": (B, E),
      "ecg/recon": (B, c.num_masked, P), "ecg/target": (B, c.num_masked, P),
      "ecg/weight": (B, c.num_masked), "text/logits": (B, K, config.model.vocab_size),
      "siglip/temperature": (), "siglip/bias": (),
  }
  out = _forward_shapes(config)
  assert {k: v.shape for k, v in out.items()} == want
  assert all(v.dtype == jnp.float32 for v in out.values())


@pytest.mark.parametrize("variant,present,absent", [
    ("contrastive", ["ecg/embedding", "text/embedding", "siglip/bias"],
     ["ecg/recon", "text/logits"]),
    ("contrastive_masked", ["ecg/embedding", "text/embedding", "siglip/bias"],
     ["ecg/recon", "text/logits"]),
    ("ecg_mask", ["ecg/recon", "ecg/embedding", "text/embedding"], ["text/logits"]),
    ("text_mask", ["ecg/recon", "text/logits", "ecg/embedding"], []),
    ("ecg_mask_only", ["ecg/recon", "ecg/shared", "ecg/specific"],
     ["text/shared", "text/embedding", "ecg/embedding", "siglip/bias", "text/logits"]),
])
def test_variant_outputs(variant, present, absent):
  out = _forward_shapes(_config(variant))
  assert set(present) <= set(out), sorted(out)
  assert not set(absent) & set(out), sorted(out)


def test_variant_params_absent():
  full = _param_paths("full")
  for top in ("ecg_decoder", "text_head", "text/", "siglip", "disentangle/text_specific"):
    assert any(p.startswith(top) for p in full), top
  assert not any(p.startswith(("ecg_decoder", "text_head")) for p in _param_paths("contrastive"))
  mask_only = _param_paths("ecg_mask_only")
  assert not any(p.startswith(("text", "siglip", "disentangle/text")) for p in mask_only)
  assert any(p.startswith("ecg_decoder") for p in mask_only)


def test_only_params_and_naming_convention():
  model = cgdmer.CGDMER(_config(), rngs=nnx.Rngs(0))
  assert not jax.tree.leaves(nnx.state(model, nnx.Not(nnx.Param)))
  for path, _ in nnx.to_flat_state(nnx.state(model)):
    names = [str(p) for p in path]
    leaf = names[-1]
    ok = (leaf in ("kernel", "bias", "scale")
          or any("embed" in n for n in names)
          or (names[0] == "siglip" and leaf in ("log_temp", "bias")))
    assert ok, names
    # The optimizer's decay rule: no weight matrix hides under an `embed` name.
    if leaf == "kernel":
      assert not any("embed" in n for n in names), names


def test_encoders_shapes_and_probe_choice():
  for probe, width in (("concat", 128), ("shared", 64), ("specific", 64)):
    config = _config(probe_features=probe)
    batch = _batch(config)

    def run():
      model = cgdmer.CGDMER(config, rngs=nnx.Rngs(0))
      return (model.encode_ecg(batch["ecg"]),
              model.encode_text(batch["report_ids"], batch["report_len"]))
    e, t = jax.eval_shape(run)
    assert e["probe"].shape == (B, width)
    assert e["embedding"].shape == t["embedding"].shape == (B, config.model.embed_dim)
    assert t["shared"].shape == e["shared"].shape


def test_patch_size_must_divide_length():
  config = _config(patch_size=30)
  with pytest.raises(ValueError, match="not divisible"):
    cgdmer.CGDMER(config, rngs=nnx.Rngs(0))


def test_visible_only_encoder_equals_encoder_on_visible_tokens_alone():
  config = _config()
  model = cgdmer.CGDMER(config, rngs=nnx.Rngs(0))
  batch = _batch(config)
  keep = masking.sample_ecg_mask(jax.random.key(3), B, config)["keep_idx"]
  got = model.ecg(batch["ecg"], batch["valid_len"], batch["lead_mask"], keep)["tokens"]
  # By hand: embed every token, pick the visible ones with numpy, run the transformer on
  # that shorter sequence alone.
  patches = np.asarray(model.ecg.patches(batch["ecg"], batch["valid_len"], batch["lead_mask"]))
  N = patches.shape[1]
  all_tokens = np.asarray(model.ecg.embed(patches, np.tile(np.arange(N), (B, 1))))
  keep = np.asarray(keep)
  short = np.stack([all_tokens[b, keep[b]] for b in range(B)])
  assert short.shape[1] == masking.ecg_mask_counts(config).num_visible < N
  want = model.ecg.backbone(short)
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)
  # Masked samples really are out of the computation: scramble every hidden patch. (With
  # z-scoring they would still shift the per-lead mean/std, as in ST-MEM, which normalises
  # before masking; 'none' isolates the encoder.)
  config.data.normalize = "none"
  raw = cgdmer.CGDMER(config, rngs=nnx.Rngs(0)).ecg
  hidden = np.asarray(masking.sample_ecg_mask(jax.random.key(3), B, config)["mask"])
  P = config.model.patch_size
  scrambled = batch["ecg"].reshape(B, N, P).copy()
  scrambled[hidden] = 1e3
  a = raw(batch["ecg"], batch["valid_len"], batch["lead_mask"], keep)["tokens"]
  b = raw(scrambled.reshape(batch["ecg"].shape), batch["valid_len"], batch["lead_mask"],
          keep)["tokens"]
  np.testing.assert_array_equal(a, b)


def test_token_valid_excludes_missing_leads_and_padding():
  P, Tp = 25, 4
  valid = patching.token_valid(np.array([100, 30]), np.array([[1, 0], [1, 1]], bool), Tp, P)
  np.testing.assert_array_equal(valid, [[1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 1, 1, 0, 0]])


def test_cpu_sizes_share_the_cpu_data_shape():
  tiny, mini = (pretrain.get_config(f"size={s}") for s in ("tiny", "mini"))
  for key in ("data.fs", "model.patch_size", "total_steps", "data.batch_size", "optim.lr"):

    def get(c):
      return functools.reduce(getattr, key.split("."), c)

    assert get(tiny) == get(mini), key
  assert mini.model.ecg_width == 2 * tiny.model.ecg_width
  small = pretrain.get_config("size=small")
  assert small.data.fs == 500 and small.model.patch_size == 50


def test_param_counts_per_size():
  counts = {s: objective.param_counts(pretrain.get_config(f"size={s}")) for s in common.SIZES}
  assert 0.8e6 < counts["tiny"]["total"] < 1.2e6
  assert 80e6 < counts["base"]["ecg backbone"] < 90e6
  assert 2e6 < counts["mini"]["total"] < 5e6
  totals = [counts[s]["total"] for s in ("tiny", "mini", "small", "base")]
  assert totals == sorted(totals) and len(set(totals)) == 4
  unrolled = objective.param_counts(_config(scan_layers=False))
  assert unrolled["total"] == counts["tiny"]["total"]


def test_patch_stats_give_tokens_the_amplitude_the_patch_norm_removes():
  rng = np.random.default_rng(0)
  patches = jnp.asarray(rng.normal(size=(2, 5, 50)), jnp.float32)
  idx = jnp.tile(jnp.arange(5, dtype=jnp.int32), (2, 1))
  moved = patches * 3.0 + 0.5   # same shapes, other amplitude and offset
  for stats in (False, True):
    enc = ecg.ECGEncoder(_config(patch_norm=True, patch_stats=stats), rngs=nnx.Rngs(0))
    delta = float(jnp.max(jnp.abs(enc.embed(moved, idx) - enc.embed(patches, idx))))
    if stats:
      assert delta > 0.1, delta   # the token now tells the two apart
      assert "stats_proj" in nnx.state(enc, nnx.Param)
    else:
      assert delta < 1e-4, delta  # the LayerNorm alone cannot
  got = ecg.patch_stats(moved)
  np.testing.assert_allclose(got[..., 0], moved.mean(-1), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got[..., 1], np.log(np.asarray(moved).std(-1) + 0.01), rtol=1e-5)
  # Without the patch LayerNorm the tokens already see the amplitude: asking for both fails.
  with pytest.raises(ValueError, match=r"needs model.patch_norm=True.*patch_stats=False"):
    ecg.ECGEncoder(_config(patch_norm=False, patch_stats=True), rngs=nnx.Rngs(0))


def test_default_encoder_sees_the_voltage():
  """Hypertrophy is read from voltage: the default tokens change when a record is scaled,
  z-scored leads (data.normalize='zscore') make them blind to it (docs/RECIPE.md)."""
  config = _config()
  assert config.data.normalize == "none" and config.model.patch_stats
  batch = _batch(config)
  args = (batch["valid_len"], batch["lead_mask"])
  for normalize, sees in (("none", True), ("zscore", False)):
    config.data.normalize = normalize
    enc = cgdmer.CGDMER(config, rngs=nnx.Rngs(0)).ecg
    a = enc(batch["ecg"], *args)["tokens"]
    b = enc(2.0 * batch["ecg"], *args)["tokens"]
    delta = float(jnp.max(jnp.abs(a - b)))
    assert (delta > 1e-2) if sees else (delta < 1e-4), (normalize, delta)


def test_sincos_positions():
  pe = layers.sincos_1d(40, 64)
  assert pe.shape == (40, 64) and pe.dtype == np.float32
  np.testing.assert_allclose(pe[0, :32], 0.0)
  np.testing.assert_allclose(pe[0, 32:], 1.0)


@pytest.mark.parametrize("model", [
    dict(shared_width=32, shared_depth=0, specific_depth=0),   # adapters + LayerNorm/Dense
    dict(scan_layers=True, remat=True, dtype="bfloat16"),
    dict(patch_norm=True, patch_stats=False),                   # ST-MEM patch embedding
    dict(patch_norm=True, patch_stats=True),                    # + patch amplitude (default)
    dict(patch_norm=False, patch_stats=False),                  # bare Dense
])
def test_config_options_trace_with_gradients(model):
  """Options not compiled elsewhere: forward + backward trace (no compile) and shapes."""
  config = _config(**model)
  batch = _batch(config)
  graphdef, params = jax.eval_shape(lambda: objective.init(config, 0))

  def loss(p):
    return objective.loss_fn(p, graphdef, batch, jax.random.key(0), config)[0]
  grads = jax.eval_shape(jax.grad(loss), params)
  assert jax.tree.structure(grads) == jax.tree.structure(params)
  out = _forward_shapes(config)
  S = config.model.shared_width or config.model.ecg_width
  assert out["ecg/shared"].shape == out["text/shared"].shape == (B, S)
  assert out["ecg/specific"].shape == (B, config.model.ecg_width)
