"""The BERT port against Hugging Face `transformers` (the reference), and the checkpoint loader.

A small random BERT is made with `transformers` + torch (CPU) in the test's tmp folder and
saved with `save_pretrained(safe_serialization=True)`; our `BertModel` loaded from that
folder must give the same hidden states, pooled output and masked-LM logits on a padded
batch. Every parameter is perturbed away from HF's init (LayerNorm 1/0, zero biases) so a
swapped or dropped tensor cannot go unnoticed.
"""

import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file
from safetensors.numpy import save_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from cgdmer_jax import objective  # noqa: E402
from cgdmer_jax.models import bert  # noqa: E402
from cgdmer_jax.models import bert_checkpoint  # noqa: E402
from cgdmer_jax.train import pretrained_text  # noqa: E402
from configs import pretrain  # noqa: E402

HF_CONFIG = dict(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=64, max_position_embeddings=40, type_vocab_size=2,
                 layer_norm_eps=1e-12, hidden_act="gelu")
LENGTHS = (16, 9, 3)
L = 16


def _perturbed(model):
  g = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn(p.shape, generator=g))
  return model.eval()


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> pathlib.Path:
  """BertForPreTraining (encoder + pooler + MLM head + NSP head) as safetensors."""
  torch.manual_seed(0)
  model = _perturbed(transformers.BertForPreTraining(transformers.BertConfig(**HF_CONFIG)))
  out = tmp_path_factory.mktemp("hf_bert")
  model.save_pretrained(out, safe_serialization=True)
  assert (out / "model.safetensors").is_file() and not (out / "pytorch_model.bin").exists()
  return out


def _batch():
  rng = np.random.default_rng(0)
  ids = rng.integers(5, HF_CONFIG["vocab_size"], (len(LENGTHS), L))
  lengths = np.asarray(LENGTHS)
  valid = np.arange(L)[None, :] < lengths[:, None]
  ids = np.where(valid, ids, 0)
  types = np.where(np.arange(L)[None, :] >= lengths[:, None] // 2, 1, 0) * valid
  return ids, lengths, valid, types


def _reference(folder, ids, valid, types):
  model = transformers.BertForPreTraining.from_pretrained(folder).eval()
  with torch.no_grad():
    out = model.bert(input_ids=torch.tensor(ids),
                     attention_mask=torch.tensor(valid.astype(np.int64)),
                     token_type_ids=torch.tensor(types))
    logits = model.cls.predictions(out.last_hidden_state)
  return (out.last_hidden_state.numpy(), out.pooler_output.numpy(), logits.numpy())


@pytest.mark.parametrize("impl", ["einsum", "xla"])
def test_matches_transformers_on_a_padded_batch(hf_folder, impl):
  ids, lengths, valid, types = _batch()
  want_h, want_pooled, want_logits = _reference(hf_folder, ids, valid, types)
  model, info = bert_checkpoint.load(hf_folder, impl=impl)
  assert info["mlm_head"] and info["pooler"]
  assert info["config"].layer_norm_eps == 1e-12
  out = model(jnp.asarray(ids), jnp.asarray(lengths), jnp.asarray(types))
  # Padded positions too: they attend to the valid keys only, in HF and here alike.
  np.testing.assert_allclose(np.asarray(out["tokens"]), want_h, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(out["pooled"]), want_pooled, rtol=1e-4, atol=1e-5)
  logits = model.mlm_logits(out["tokens"])
  np.testing.assert_allclose(np.asarray(logits), want_logits, rtol=1e-4, atol=1e-4)
  # The tokens really depend on the padding mask (a test that cannot miss it).
  unmasked = model(jnp.asarray(ids), None, jnp.asarray(types))["tokens"]
  assert not np.allclose(np.asarray(unmasked)[2, :3], want_h[2, :3], rtol=1e-3, atol=1e-3)


def test_bert_model_checkpoint_without_prefix_or_head(hf_folder, tmp_path):
  """A plain `BertModel` folder (MedCPT's kind): no `bert.` prefix, no MLM head."""
  hf = transformers.BertForPreTraining.from_pretrained(hf_folder).bert
  hf.save_pretrained(tmp_path, safe_serialization=True)
  ids, lengths, valid, _ = _batch()
  with torch.no_grad():
    want = hf(input_ids=torch.tensor(ids),
              attention_mask=torch.tensor(valid.astype(np.int64))).last_hidden_state.numpy()
  model, info = bert_checkpoint.load(tmp_path)
  assert not info["mlm_head"] and not model.has_mlm_head
  got = model(jnp.asarray(ids), jnp.asarray(lengths))["tokens"]
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


def test_sharded_and_legacy_named_checkpoints_load(hf_folder, tmp_path):
  """Shards listed in model.safetensors.index.json; TF-era `gamma`/`beta` LayerNorm names."""
  ids, lengths, _, types = _batch()
  want = bert_checkpoint.load(hf_folder)[0](jnp.asarray(ids), jnp.asarray(lengths),
                                            jnp.asarray(types))["tokens"]
  sharded = tmp_path / "sharded"
  transformers.BertForPreTraining.from_pretrained(hf_folder).save_pretrained(
      sharded, safe_serialization=True, max_shard_size="20KB")
  assert (sharded / "model.safetensors.index.json").is_file()
  assert len(bert_checkpoint.weight_files(sharded)) > 1
  legacy = tmp_path / "legacy"
  legacy.mkdir()
  (legacy / "config.json").write_bytes((hf_folder / "config.json").read_bytes())
  w = load_file(str(hf_folder / "model.safetensors"))
  save_file({k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias",
                                                                      "LayerNorm.beta"): v
             for k, v in w.items()}, str(legacy / "model.safetensors"))
  for folder in (sharded, legacy):
    got = bert_checkpoint.load(folder)[0](jnp.asarray(ids), jnp.asarray(lengths),
                                          jnp.asarray(types))["tokens"]
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_bin_only_folder_is_refused_without_unpickling(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(dict(HF_CONFIG, model_type="bert")))
  # Not a pickle at all: reading it in any way other than refusing would fail differently.
  (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not a pickle")
  with pytest.raises(FileNotFoundError, match=r"(?s)pytorch_model\.bin.*safe_serialization=True"):
    bert_checkpoint.load(tmp_path)


@pytest.mark.parametrize("change,message", [
    (dict(hidden_size=48), r"'embeddings\.word_embeddings\.weight' has shape \(300, 32\), "
                           r"config\.json implies \(300, 48\)"),
    (dict(num_hidden_layers=3), r"no tensor 'encoder\.layer\.2\.attention\.self\.query\.weight'"),
    (dict(num_hidden_layers=1), r"tensor 'encoder\.layer\.1\.attention\.output\.LayerNorm\.bias'"
                                r" \(shape \(32,\)\) that a BERT of this config\.json does not"),
    (dict(intermediate_size=128), r"'encoder\.layer\.0\.intermediate\.dense\.weight' has shape "
                                  r"\(64, 32\), config\.json implies \(128, 32\)"),
    (dict(hidden_act="swish"), r"hidden_act 'swish' is not supported"),
    (dict(model_type="t5"), r"model_type 't5' is not a BERT-family encoder"),
])
def test_mismatched_config_names_the_first_mismatch(hf_folder, tmp_path, change, message):
  for f in hf_folder.iterdir():
    (tmp_path / f.name).write_bytes(f.read_bytes())
  cfg = json.loads((hf_folder / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps(dict(cfg, **change)))
  with pytest.raises(ValueError, match=message):
    bert_checkpoint.load(tmp_path)


def test_index_naming_a_file_outside_the_folder_is_refused(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(dict(HF_CONFIG, model_type="bert")))
  (tmp_path / "model.safetensors.index.json").write_text(
      json.dumps(dict(weight_map={"embeddings.word_embeddings.weight": "../x.safetensors"})))
  with pytest.raises(ValueError, match=r"not a \.safetensors file inside the folder"):
    bert_checkpoint.weight_files(tmp_path)


def test_config_round_trip_and_gelu_is_exact():
  cfg = bert.BertConfig.from_hf(dict(HF_CONFIG, model_type="bert", pad_token_id=None))
  assert bert.BertConfig.from_dict(cfg.to_dict()) == cfg
  assert cfg.pad_token_id == 0  # null in config.json keeps HF's default
  x = jnp.asarray([-2.0, -0.5, 0.7, 3.0])
  want = torch.nn.functional.gelu(torch.tensor(np.asarray(x))).numpy()
  np.testing.assert_allclose(np.asarray(bert.ACTIVATIONS["gelu"](x)), want, rtol=1e-6)


def test_resolve_takes_the_architecture_from_the_folder(hf_folder, tmp_path):
  for f in hf_folder.iterdir():
    (tmp_path / f.name).write_bytes(f.read_bytes())
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  vocab += [f"w{i}" for i in range(HF_CONFIG["vocab_size"] - len(vocab))]
  (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
  config = pretrain.get_config("size=tiny")
  config.model.text.init_from = str(tmp_path)
  config.model.max_report_len = 32  # the fixture's max_position_embeddings is 40
  pretrained_text.resolve(config)
  t = config.model.text
  assert t.kind == "bert" and t.mlm_head and t.vocab_sha256
  assert config.model.text_width == 32 and config.model.vocab_size == 300
  assert bert.BertConfig.from_dict(t.bert) == bert_checkpoint.read_config(tmp_path)
  # The tower holds exactly the checkpoint's encoder (pooler left out), the text head its
  # masked-LM head.
  want = bert_checkpoint.expected_shapes(bert_checkpoint.read_config(tmp_path), mlm_head=False,
                                         pooler=False)
  counts = objective.param_counts(config)
  assert counts["text backbone"] == sum(int(np.prod(s)) for s in want.values())
  config.model.text.freeze_layers = 3
  with pytest.raises(ValueError, match=r"freeze_layers=3 is outside 0\.\.2"):
    pretrained_text.resolve(config)
