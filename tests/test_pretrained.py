"""Pretrained weights in and out (`attn_jax.pretrained`, `config.init` with a file).

References: Hugging Face `transformers` in torch (a randomly initialised tiny
`ViTForImageClassification` / `GPT2LMHeadModel`, evaluated in eval mode) for the HF mapping both
ways; a NumPy ViT forward pass that reads vision_transformer's .npz key names directly (the
names timm's `_load_weights` reads) for the npz layout; `torch.nn.functional.interpolate(mode=
'bicubic', align_corners=False)` for the bicubic resampling and `scipy.ndimage.zoom` order 1 for
the linear one. The torch tests skip where transformers is not installed
(`pip install -e .[port]`). timm's own npz reader is not run: timm imports torchvision, whose
PyPI wheel needs the CUDA torch build (the NumPy forward pass reads the same key names).
"""

from __future__ import annotations

import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from attn_jax.models import build_model
from attn_jax.models.vit import ViT
from attn_jax.pretrained import (detect_format, hf_model_config, load_hf, load_npz, read_npz,
                                 save_hf, save_npz)
from attn_jax.train.init import Initializer, flatten, resize_posemb

TINY_VIT = dict(num_classes=5, patch_size=4, hidden_size=32, depth=2, num_heads=2, mlp_dim=64)


def _vit_params(model: ViT, size: int, seed: int = 0) -> dict:
    """Raw params with every leaf random (LayerNorms and biases included)."""
    params = nn.unbox(model.init(jax.random.PRNGKey(seed), jnp.zeros((1, size, size, 3)))["params"])
    keys = iter(jax.random.split(jax.random.PRNGKey(seed + 1), 100))
    return jax.tree.map(lambda x: np.asarray(0.3 * jax.random.normal(next(keys), x.shape)), params)


PORT_EXTRA = "the HF references need torch and transformers: pip install -e '.[port]'"


def _torch_and_transformers():
    return (pytest.importorskip("torch", reason=PORT_EXTRA),
            pytest.importorskip("transformers", reason=PORT_EXTRA))


def _randomise(torch_model, torch, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in torch_model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))


# ------------------------------------------------------------------------------------ HF ViT
def test_hf_vit_loads_with_the_same_logits_and_exports_back(tmp_path):
    """A random tiny HF ViT (exact GELU, eps 1e-12) gives torch's logits in the repo's ViT; the
    repo's export loads back into transformers with the same logits."""
    torch, transformers = _torch_and_transformers()
    hf_config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64, image_size=16, patch_size=4,
                                       num_labels=5, hidden_act="gelu", num_channels=3)
    torch.manual_seed(0)
    hf = transformers.ViTForImageClassification(hf_config).eval()
    _randomise(hf, torch)
    hf.save_pretrained(tmp_path / "hf")
    images = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
    with torch.no_grad():
        want = hf(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2))).logits.numpy()

    config, params = load_hf(str(tmp_path / "hf"))
    name, fields = hf_model_config(config)
    assert (name, fields["mlp_activation"], fields["layer_norm_epsilon"]) == ("vit", "gelu", 1e-12)
    model = build_model(name, **fields)
    got = np.asarray(model.apply({"params": params}, images))
    # 1e-5: the tanh-GELU would be ~5e-5 off here (exact GELU ~2e-7), so this tells them apart.
    np.testing.assert_allclose(got, want, atol=1e-5)

    save_hf(model, params, str(tmp_path / "out"))
    back = transformers.ViTForImageClassification.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        again = back(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2))).logits.numpy()
    np.testing.assert_allclose(again, want, atol=1e-5)

    # Through config.init (format 'auto' -> 'hf') into 3 classes: a fresh head, the body loaded.
    three = build_model(name, **{**fields, "num_classes": 3})
    fresh = three.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
    init = Initializer(str(tmp_path / "hf"))
    tree = flatten(nn.unbox(init.apply(fresh)))
    assert init.resolved_format == "hf" and not init.report.unused
    assert [m[0] for m in init.report.mismatched] == ["head/bias", "head/kernel"]
    np.testing.assert_array_equal(tree["head/kernel"], flatten(nn.unbox(fresh))["head/kernel"])
    np.testing.assert_array_equal(tree["cls"], flatten(params)["cls"])


def test_hf_gpt2_loads_with_the_same_logits_and_exports_back(tmp_path):
    """A random tiny GPT2LMHeadModel (fused c_attn, tied wte, wpe, ln_f, gelu_new) gives torch's
    logits in the repo's decoder_lm; the export loads back into transformers."""
    torch, transformers = _torch_and_transformers()
    hf_config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2,
                                        n_head=2, bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    _randomise(hf, torch, seed=1)
    hf.save_pretrained(tmp_path / "hf")
    ids = np.random.default_rng(0).integers(0, 50, size=(2, 16))
    with torch.no_grad():
        want = hf(torch.from_numpy(ids)).logits.numpy()

    config, params = load_hf(str(tmp_path / "hf" / "model.safetensors"))
    name, fields = hf_model_config(config)
    assert name == "decoder_lm" and fields["activation"] == "gelu_tanh"
    model = build_model(name, **fields)
    got = np.asarray(model.apply({"params": params}, jnp.asarray(ids, jnp.int32)))
    np.testing.assert_allclose(got, want, atol=1e-4)

    # Through config.init, strict: every parameter of the preset's tree comes from the file.
    fresh = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16), jnp.int32))["params"]
    init = Initializer(str(tmp_path / "hf"), strict=True)
    loaded = flatten(nn.unbox(init.apply(fresh)))
    assert not init.report.unused and not init.report.initialised
    for key, value in flatten(params).items():
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)

    save_hf(model, params, str(tmp_path / "out"))
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        again = back(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(again, want, atol=1e-4)


# ------------------------------------------------------------------------------------ npz
def _numpy_vit_from_npz(w: dict[str, np.ndarray], images: np.ndarray, heads: int) -> np.ndarray:
    """ViT logits computed straight from vision_transformer's key names (models_vit.py):
    patch conv, cls, Transformer/posembed_input, encoderblock_i/{LayerNorm_0,
    MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3}, encoder_norm, head; tanh-GELU,
    LayerNorm eps 1e-6."""
    def ln(x, p):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-6) * w[p + "/scale"] + w[p + "/bias"]

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    k = w["embedding/kernel"]
    p = k.shape[0]
    b, h, wd, c = images.shape
    patches = images.reshape(b, h // p, p, wd // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    x = patches.reshape(b, -1, p * p * c) @ k.reshape(-1, k.shape[-1]) + w["embedding/bias"]
    x = np.concatenate([np.broadcast_to(w["cls"], (b, 1, x.shape[-1])), x], 1)
    x = x + w["Transformer/posembed_input/pos_embedding"]
    i = 0
    while f"Transformer/encoderblock_{i}/LayerNorm_0/scale" in w:
        blk = f"Transformer/encoderblock_{i}/"
        y = ln(x, blk + "LayerNorm_0")
        att = blk + "MultiHeadDotProductAttention_1/"
        q, kk, v = (np.einsum("bld,dhk->blhk", y, w[att + n + "/kernel"]) + w[att + n + "/bias"]
                    for n in ("query", "key", "value"))
        s = np.einsum("bqhk,bshk->bhqs", q, kk) / math.sqrt(q.shape[-1])
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        o = np.einsum("bhqs,bshk->bqhk", a, v)
        x = x + np.einsum("bqhk,hkd->bqd", o, w[att + "out/kernel"]) + w[att + "out/bias"]
        y = ln(x, blk + "LayerNorm_2")
        mlp = blk + "MlpBlock_3/"
        y = gelu(y @ w[mlp + "Dense_0/kernel"] + w[mlp + "Dense_0/bias"])
        x = x + y @ w[mlp + "Dense_1/kernel"] + w[mlp + "Dense_1/bias"]
        i += 1
    x = ln(x, "Transformer/encoder_norm")[:, 0]
    return x @ w["head/kernel"] + w["head/bias"]


def test_npz_round_trip_in_the_vision_transformer_layout(tmp_path):
    """save -> load gives identical arrays; the file's keys are vision_transformer's and a NumPy
    ViT reading those keys gives the repo's logits; big_vision's layout (and its scanned stack)
    loads to the same arrays."""
    model = ViT(**TINY_VIT)
    params = _vit_params(model, 16)
    path = str(tmp_path / "vit.npz")
    save_npz(params, path)
    raw = read_npz(path)
    assert "Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel" in raw
    assert "Transformer/posembed_input/pos_embedding" in raw and "cls" in raw
    loaded = load_npz(path)
    want, got = flatten(params), flatten(loaded)
    assert set(want) == set(got)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)

    images = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype(np.float32)
    logits = np.asarray(model.apply({"params": loaded}, images))
    np.testing.assert_allclose(logits, _numpy_vit_from_npz(raw, images, heads=2), atol=1e-4)

    save_npz(params, str(tmp_path / "bv.npz"), layout="big_vision")
    bv = read_npz(str(tmp_path / "bv.npz"))
    assert "pos_embedding" in bv and "Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel" in bv
    # big_vision's scanned stack, under its 'params/' prefix: one array per name, depth first.
    scanned = {f"params/{k}": v for k, v in bv.items() if "encoderblock_" not in k}
    for k in [k for k in bv if k.startswith("Transformer/encoderblock_0/")]:
        rest = k.split("/", 2)[2]
        scanned[f"params/Transformer/encoderblock/{rest}"] = np.stack(
            [bv[f"Transformer/encoderblock_{i}/{rest}"] for i in range(2)])
    with open(tmp_path / "scan.npz", "wb") as f:
        np.savez(f, **scanned)
    for name in ("bv.npz", "scan.npz"):
        got = flatten(load_npz(str(tmp_path / name)))
        assert set(got) == set(want), name
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{name}: {key}")


def test_npz_keeps_other_models_names_as_they_are(tmp_path):
    """A tree in vision_transformer's MLP-Mixer names (models_mixer.py) and the Dense / Embed
    leaves of a language model load under the same names: only ViT blocks are renamed. A
    big_vision train state ('params/...' beside 'opt/...') gives its parameters."""
    rng = np.random.default_rng(0)
    tree = {"stem": {"kernel": rng.normal(size=(4, 4, 3, 8)), "bias": rng.normal(size=8)},
            "MixerBlock_0": {"LayerNorm_0": {"scale": rng.normal(size=8)},
                             "token_mixing": {"Dense_0": {"kernel": rng.normal(size=(16, 4))}}},
            "pre_head_layer_norm": {"scale": rng.normal(size=8)},
            "decoder": {"embedder": {"position_embedding": {"pos_embedding":
                                                            rng.normal(size=(1, 4, 8))}}},
            "head": {"kernel": rng.normal(size=(8, 3))}}
    save_npz(tree, str(tmp_path / "m.npz"))
    want = flatten(tree)
    assert set(read_npz(str(tmp_path / "m.npz"))) == set(want)
    state = {f"params/{k}": v for k, v in want.items()}
    state["opt/state/count"] = np.zeros(())
    with open(tmp_path / "state.npz", "wb") as f:
        np.savez(f, **state)
    for name in ("m.npz", "state.npz"):
        got = flatten(load_npz(str(tmp_path / name)))
        assert set(got) == set(want), name
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


# ------------------------------------------------------------------------------------ posemb
def test_posemb_resize_identity_and_methods():
    """Same grid: the identity, exactly, for both methods. 5x5 -> 7x7 and 5x5 -> 3x3: linear is
    scipy's zoom order 1, bicubic differs from it, both keep the class token's row."""
    rng = np.random.default_rng(0)
    old = rng.normal(size=(1, 1 + 25, 8)).astype(np.float32)
    for method in ("linear", "bicubic"):
        np.testing.assert_array_equal(resize_posemb(old, old.shape, method), old)
    for side in (7, 3):
        lin = resize_posemb(old, (1, 1 + side * side, 8), "linear")
        cub = resize_posemb(old, (1, 1 + side * side, 8), "bicubic")
        zoom = scipy.ndimage.zoom(old[0, 1:].reshape(5, 5, 8), (side / 5, side / 5, 1), order=1)
        np.testing.assert_allclose(lin[0, 1:], zoom.reshape(-1, 8), rtol=1e-6)
        np.testing.assert_array_equal(lin[:, :1], old[:, :1])
        np.testing.assert_array_equal(cub[:, :1], old[:, :1])
        assert np.abs(cub - lin).max() > 1e-3
    with pytest.raises(ValueError, match="posemb_resize must be one of"):
        resize_posemb(old, old.shape, "nearest")


def test_bicubic_matches_torch_interpolate():
    """Reference: torch.nn.functional.interpolate(mode='bicubic', align_corners=False), as HF
    ViT's interpolate_pos_encoding (timm adds antialiasing when shrinking)."""
    torch = pytest.importorskip("torch", reason="the bicubic reference is torch's interpolate: "
                                "pip install -e '.[port]'")
    old = np.random.default_rng(1).normal(size=(1, 1 + 36, 4)).astype(np.float32)
    for side in (9, 4):
        grid = torch.from_numpy(old[0, 1:].reshape(1, 6, 6, 4).transpose(0, 3, 1, 2))
        ref = torch.nn.functional.interpolate(grid, size=(side, side), mode="bicubic",
                                              align_corners=False).numpy()
        got = resize_posemb(old, (1, 1 + side * side, 4), "bicubic")
        np.testing.assert_allclose(got[0, 1:], ref[0].transpose(1, 2, 0).reshape(-1, 4),
                                   atol=1e-5)


def test_a_28px_npz_initialises_a_32px_vit_through_config_init(tmp_path):
    """config.init.path = an .npz made at 28x28 (7x7 patches): a 32x32 ViT (8x8) starts from it
    with its position table resampled (bicubic here) and everything else copied."""
    old_model = ViT(**{**TINY_VIT, "depth": 1})
    old = _vit_params(old_model, 28)
    path = str(tmp_path / "vit28.npz")
    save_npz(old, path)
    new_model = ViT(**{**TINY_VIT, "depth": 1})
    fresh = new_model.init(jax.random.PRNGKey(3), jnp.zeros((1, 32, 32, 3)))["params"]
    from attn_jax.train.config import base_config

    config = base_config()
    config.init.update(path=path, posemb_resize="bicubic", strict=True)
    init = Initializer.from_config(config)
    tree = nn.unbox(init.apply(fresh))
    params = flatten(tree)
    assert "adapted" in init.report.summary()
    assert init.report.adapted == [("posembed_input/pos_embedding", (1, 65, 32), (1, 50, 32))]
    assert not init.report.initialised and not init.report.mismatched
    want = flatten(old)
    np.testing.assert_allclose(params["posembed_input/pos_embedding"],
                               resize_posemb(want["posembed_input/pos_embedding"], (1, 65, 32),
                                             "bicubic"), rtol=1e-6)
    for key in want:
        if key != "posembed_input/pos_embedding":
            np.testing.assert_array_equal(params[key], want[key], err_msg=key)
    logits = new_model.apply({"params": tree}, np.zeros((1, 32, 32, 3), np.float32))
    assert logits.shape == (1, 5)


# ------------------------------------------------------------------------------------ errors
def test_strict_names_the_first_mismatching_parameter_and_both_shapes(tmp_path):
    path = str(tmp_path / "vit.npz")
    save_npz(_vit_params(ViT(**TINY_VIT), 16), path)
    wider = ViT(**{**TINY_VIT, "mlp_dim": 128})
    fresh = wider.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
    with pytest.raises(ValueError, match=r"format 'npz'.*parameter "
                       r"Transformer/encoderblock_0/mlp/Dense_0/bias has shape \(128,\) in the "
                       r"model but \(64,\) in the checkpoint"):
        Initializer(path, strict=True).apply(fresh)
    # Not strict: the mismatched MLPs stay fresh and the report says so.
    init = Initializer(path)
    init.apply(fresh)
    assert ("Transformer/encoderblock_0/mlp/Dense_0/kernel", (32, 128), (32, 64)) in \
        init.report.mismatched


def test_unknown_layouts_say_which_format_was_expected(tmp_path):
    path = str(tmp_path / "random.npz")
    with open(path, "wb") as f:
        np.savez(f, foo=np.zeros(3), **{"bar/baz": np.ones(2)})
    fresh = ViT(**TINY_VIT).init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
    with pytest.raises(ValueError, match=r"npz layout of vision_transformer / big_vision.*"
                       r"unrecognised keys: \['bar/baz', 'foo'\]"):
        Initializer(path).apply(fresh)
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    from safetensors.numpy import save_file

    save_file({"bert.embeddings.word_embeddings.weight": np.zeros((4, 2), np.float32)},
              str(hf_dir / "model.safetensors"))
    (hf_dir / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert detect_format(str(hf_dir)) == "hf"
    with pytest.raises(ValueError, match=r"model_type='bert': format 'hf' reads \['gpt2', 'vit'\]"):
        Initializer(str(hf_dir)).apply(fresh)
    (hf_dir / "config.json").write_text(json.dumps(
        {"model_type": "vit", "num_hidden_layers": 1, "num_attention_heads": 2, "patch_size": 4,
         "hidden_size": 32, "intermediate_size": 64}))
    with pytest.raises(ValueError, match=r"no key 'embeddings.cls_token': not the layout format "
                       r"'hf' expects for model_type 'vit'"):
        Initializer(str(hf_dir / "model.safetensors"), format="hf").apply(fresh)
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="cannot tell its format"):
        Initializer(str(tmp_path / "weights.bin")).apply(fresh)
    with pytest.raises(ValueError, match="config.init.format must be one of"):
        Initializer(path, format="torch")


def test_train_py_starts_an_lm_from_an_npz(tmp_path, capsys):
    """End to end through the trainer: config.init.path = an .npz of a GPT-style LM (strict);
    the byte-level LM task, whose tokenizer check reads workdirs only, trains a step from it.
    (Before `is_pretrained_file` the task looked for a workdir's config.json there.)"""
    from attn_jax import tasks
    from attn_jax.train.loop import train_and_evaluate
    from tiny_configs import tiny_config

    config = tiny_config("lm", str(tmp_path / "data"))
    model = tasks.get_task("lm")(config).model
    params = model.init(jax.random.PRNGKey(5), jnp.zeros((1, 8), jnp.int32))["params"]
    save_npz(params, str(tmp_path / "lm.npz"))
    config.init.update(path=str(tmp_path / "lm.npz"), strict=True)
    config.evals = {}
    config.total_steps = 1
    train_and_evaluate(config, str(tmp_path / "run"), jax.devices()[:1])
    n = len(flatten(params))
    assert f"loaded {n} parameters (0 adapted to a new shape), initialised 0 new ones" in \
        capsys.readouterr().out
