"""The model-family contracts: the recurrent seq2seq (a second registered encoder-decoder, its
cache a carry) and a captioning-shaped model train, decode (greedy and beam) and are scored
(exact match, BLEU) through the same sequence task, decode evaluator and `attn_jax.decoding` as
the Transformer, with no change to any of them; the recurrent model's alignment comes out of the
same attention-map tool as the Transformer's.

References: the teacher-forced forward pass (cached step decoding must reproduce its logits),
the arg-max of those logits (greedy), and sacrebleu / string equality on the decoded strings.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax import decoding, models
from attn_jax.data import text
from attn_jax.models.vit import ViT
from attn_jax.train import loop
from attn_jax.viz import attention_maps
from tiny_configs import tiny_config


@pytest.fixture
def registered(monkeypatch):
    """The double in the model registry, as a new family would be."""
    monkeypatch.setitem(models.MODELS, "vit_captioner", "doubles:ViTCaptioner")


def _rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _teacher_forced_step_check(model, params, source, targets, valid):
    """Cached step decoding of `targets` reproduces the full forward pass's logits at the
    `valid` positions (up to each row's eos: the full pass masks the padding after it)."""
    full = model.apply({"params": params}, source, targets)
    fn, cache = decoding.encoder_decoder_step_fn(model, params, source,
                                                 max_len=targets.shape[1])
    inputs = jnp.concatenate([jnp.full((source.shape[0], 1), model.bos_id), targets[:, :-1]], 1)
    stepped = []
    for t in range(targets.shape[1]):
        logits, cache = fn(inputs[:, t:t + 1], cache)
        stepped.append(logits)
    np.testing.assert_allclose(np.stack(stepped, 1)[valid], np.asarray(full)[valid], atol=2e-5)


@pytest.mark.parametrize("name, kind", [("rnn_seq2seq", "text"), ("vit_captioner", "image")])
def test_second_family_trains_decodes_and_is_scored(name, kind, registered, tmp_path):
    config = tiny_config("seq2seq")
    if kind == "image":
        config.data = dict(dataset="digits_words", tokenizer="byte", max_tgt_len=8,
                           eval_splits=["validation"])
        config.model = dict(name=name, max_len=16)
    else:
        config.model = dict(name=name, cell="gru", attention="additive", embed_dim=16,
                            hidden=32, bidirectional=False)
    config.evals = dict(
        loss=dict(type="loss"),
        greedy=dict(type="decode", splits=["test"], max_examples=20, num_examples_shown=2),
        beam=dict(type="decode", splits=["test"], max_examples=20, beam_size=3,
                  num_examples_shown=0))
    config.optim.update(name="adam", learning_rate=3e-3)
    config.total_steps = 30
    config.eval_every_steps = 30
    config.mesh = dict(data=2, fsdp=1, tensor=1)
    state, final = loop.train_and_evaluate(config, str(tmp_path), jax.devices()[:2])
    losses = [r["loss"] for r in _rows(str(tmp_path)) if r["split"] == "train"]
    assert losses[-1] < losses[0]
    assert {"test_exact_match", "test_bleu", "validation_loss"} <= set(final)

    # The evaluator's numbers are the decoded strings scored by string equality and sacrebleu.
    from attn_jax import tasks

    task = tasks.get_task("seq2seq")(config)
    params = jax.device_get(state.params)
    sources, references = task.decode_references("test", 20)
    greedy = task.translate(params, [s for s, _ in task.decode_pairs("test", 20)])
    beam = task.translate(params, [s for s, _ in task.decode_pairs("test", 20)], beam_size=3)
    np.testing.assert_allclose(final["test_exact_match"], text.exact_match(greedy, references))
    np.testing.assert_allclose(final["test_bleu"], text.bleu(greedy, references), atol=1e-6)
    assert len(beam) == len(greedy) == 20 and len(sources) == 20

    # Greedy decoding is the arg-max of the teacher-forced logits of its own output.
    batch = next(iter(task.decode_batches("test", 4)))
    out = np.asarray(jax.jit(task.predict_tokens_fn(task.max_tgt_len))(params, batch["inputs"]))
    logits = task.model.apply({"params": params}, batch["inputs"], jnp.asarray(out))
    ends = np.array([list(r).index(2) if 2 in r else len(r) - 1 for r in out])
    valid = np.arange(out.shape[1])[None, :] <= ends[:, None]
    np.testing.assert_array_equal(np.asarray(logits).argmax(-1)[valid], out[valid])
    _teacher_forced_step_check(task.model, params, batch["inputs"], jnp.asarray(out), valid)
    if kind == "text":
        _attention_map_check(str(tmp_path))


def _attention_map_check(workdir):
    """The Transformer's heatmap tool draws the recurrent alignment: one PNG, tokens on both
    axes, weights from a teacher-forced pass that reproduces the greedy translation."""
    out = os.path.join(workdir, "maps")
    maps = attention_maps.attention_maps(workdir, "21. November 2026", out)
    assert sorted(os.listdir(out)) == ["decoder_layer0_cross_attention.png"]
    w = maps.weights["decoder/layer_0/cross_attention"]
    assert w.shape == (1, 1, len(maps.output_ids), len(maps.source_ids))
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(maps.logits.argmax(-1)[0], maps.output_ids)


def test_vit_encode_features_and_logits_agree():
    """`encode` is the token sequence the head pools: features = mean of the GAP tokens (or the
    class token), logits = features @ head."""
    images = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 1))
    for pool in ("gap", "token"):
        vit = ViT(num_classes=3, patch_size=2, hidden_size=16, depth=1, num_heads=2, mlp_dim=32,
                  pool_type=pool, head_zero_init=False)
        variables = vit.init(jax.random.PRNGKey(1), images)
        tokens = vit.apply(variables, images, method="encode")
        assert tokens.shape == (2, 16 + (pool == "token"), 16)
        features = vit.apply(variables, images, method="features")
        pooled = tokens.mean(1) if pool == "gap" else tokens[:, 0]
        np.testing.assert_allclose(features, pooled, atol=1e-6)
        head = variables["params"]["head"]
        np.testing.assert_allclose(vit.apply(variables, images),
                                   features @ head["kernel"].value + head["bias"].value,
                                   atol=1e-5)


def test_decoding_imports_no_model_class():
    """decoding.py is search only: it never names a model family."""
    import attn_jax.decoding as module

    source = open(module.__file__).read()
    assert "models.transformer" not in source and "models.vit" not in source


def test_a_model_without_the_contract_is_refused(registered):
    config = tiny_config("seq2seq")
    config.model = dict(name="decoder_lm", emb_dim=8, num_heads=2, mlp_dim=8,
                        num_decoder_layers=1, max_len=32)
    from attn_jax import tasks

    with pytest.raises(ValueError, match="EncoderDecoderModel contract"):
        tasks.get_task("seq2seq")(config)
