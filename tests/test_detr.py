"""DETR (attn_jax.models.detr): output shapes and ranges, the auxiliary per-layer outputs, the
positional encodings on queries and keys but never values (recorded at every attention call),
the sine encoding against a NumPy transcription of the official PositionEmbeddingSine, the
cross-attention maps, permutation equivariance in the object queries, the backbone's parameter
group, and bad input. Tiny: 32x32 images, d_model 16, 1 + 2 layers, 5 queries."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax.attention import MultiHeadAttention
from attn_jax.models import build_model
from attn_jax.positional import detr_sine_positions, detr_sine_positions_masked
from attn_jax.train.optim import ParamGroups

CNN = dict(name="cnn", widths=(8, 16, 16), blocks_per_stage=1, num_groups=4)  # 32px -> 8x8 grid
TINY = dict(num_classes=3, d_model=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=2,
            mlp_dim=32, num_queries=5, backbone=CNN)


def _model(**overrides):
    return build_model("detr", **{**TINY, **overrides})


def _images(batch=2, channels=3, seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), (batch, 32, 32, channels))


PERM = np.array([3, 0, 4, 1, 2])


def _key(seed):
    """A key of the RngBitGenerator PRNG: its init and dropout compile several times faster on
    the CPU than threefry's (nothing here depends on which random stream it is)."""
    return jax.random.key(seed, impl="unsafe_rbg")


def _record_attention_inputs(model, variables, x):
    """Every MultiHeadAttention call's (q, k, v) inputs and the input_proj / encoder layer
    outputs, keyed by module path (recorded while tracing, returned as outputs)."""
    calls = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        path = "/".join(context.module.scope.path)
        if isinstance(context.module, MultiHeadAttention) and context.method_name == "__call__":
            calls[path] = tuple(args[:3])
        elif path in ("input_proj", "encoder_layer0") and context.method_name == "__call__":
            calls[path] = out
        return out

    with nn.intercept_methods(interceptor):
        out = model.apply(variables, x)
    return out, calls


@pytest.fixture(scope="module")
def run():
    """The tiny post-norm model (2 decoder layers), its parameters, and everything the tests
    read, computed in one jitted function (one compilation on the shared CPU)."""
    model, x = _model(), _images()
    variables = nn.unbox(jax.jit(model.init)(_key(1), x))

    def everything(variables, x):
        out, calls = _record_attention_inputs(model, variables, x)

        def cross_map(query_pos):  # the model with these object queries
            params = dict(variables["params"], query_pos=query_pos)
            return model.apply({"params": params}, x, method="cross_attention_map")

        query_pos = variables["params"]["query_pos"]
        both = jax.vmap(cross_map)(jnp.stack([query_pos, query_pos[PERM]]))
        return dict(
            out=out, calls=calls,
            trained=model.apply(variables, x, train=True, rngs={"dropout": _key(3)}),
            mapped=jax.tree.map(lambda a: a[0], both),
            permuted=jax.tree.map(lambda a: a[1], both))

    return model, variables, jax.jit(everything)(variables, x)


def test_shapes_ranges_and_aux(run):
    model, variables, got = run
    out = got["out"]
    assert out["logits"].shape == (2, 5, 4) and out["boxes"].shape == (2, 5, 4)
    assert len(out["aux"]) == 1                       # one per earlier decoder layer
    assert out["aux"][0]["logits"].shape == (2, 5, 4)
    for boxes in (out["boxes"], out["aux"][0]["boxes"]):
        assert bool(jnp.all((boxes > 0) & (boxes < 1)))
    assert "encoder_norm" not in variables["params"]
    assert model.grid_shape((32, 32, 3)) == (8, 8)
    # training mode: dropout changes the outputs
    assert not np.allclose(got["trained"]["logits"], out["logits"])


def test_pre_norm_shapes():
    model = _model(norm="pre", num_decoder_layers=3)
    x = _images()
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    out = jax.eval_shape(model.apply, variables, x)
    assert [a["boxes"].shape for a in out["aux"]] == [(2, 5, 4)] * 2
    assert out["logits"].shape == (2, 5, 4)
    assert "encoder_norm" in variables["params"]


def test_positions_go_to_queries_and_keys_never_values(run):
    _, variables, got = run
    calls = got["calls"]
    pos = detr_sine_positions(8, 8, 16)[None]
    query_pos = nn.unbox(variables["params"]["query_pos"])[None]
    # encoder self-attention: q = k = features + pos; v = the un-positioned input_proj output
    q, k, v = calls["encoder_layer0/self_attention"]
    np.testing.assert_allclose(v, calls["input_proj"], atol=1e-6)
    np.testing.assert_allclose(q, k)
    np.testing.assert_allclose(k - v, jnp.broadcast_to(pos, v.shape), atol=1e-5)
    memory = calls["encoder_layer0"]
    for i in range(2):
        # decoder self-attention: q = k = x + query_pos; v = x (the zeros in layer 0)
        q, k, v = calls[f"decoder_layer{i}/self_attention"]
        np.testing.assert_allclose(q, k)
        np.testing.assert_allclose(k - v, jnp.broadcast_to(query_pos, v.shape), atol=1e-5)
        if i == 0:
            assert not np.any(v)
        # cross-attention: k = memory + pos; v = memory
        q, k, v = calls[f"decoder_layer{i}/cross_attention"]
        np.testing.assert_allclose(v, memory, atol=1e-6)
        np.testing.assert_allclose(k - v, jnp.broadcast_to(pos, v.shape), atol=1e-5)
    # every attention was seen: 1 encoder + 2 x (self + cross)
    assert sum("attention" in p for p in calls) == 5


def _sine_reference(h, w, dim, temperature=10000.0, scale=2 * math.pi, not_mask=None):
    """A NumPy transcription of the official DETR PositionEmbeddingSine (normalize=True) on a
    [b, h, w] not-mask (True = a real cell; default one unpadded image): cumulative sums, dim_t,
    stacked sin(0::2) / cos(1::2), y then x -> [b, h * w, dim] ([h * w, dim] by default)."""
    single = not_mask is None
    not_mask = np.ones((1, h, w)) if single else np.asarray(not_mask, np.float64)
    b = not_mask.shape[0]
    y_embed, x_embed = not_mask.cumsum(1), not_mask.cumsum(2)
    eps = 1e-6
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    feats = dim // 2
    dim_t = np.arange(feats, dtype=np.float64)
    dim_t = temperature ** (2 * (dim_t // 2) / feats)
    pos_x, pos_y = x_embed[..., None] / dim_t, y_embed[..., None] / dim_t
    pos_x = np.stack((np.sin(pos_x[..., 0::2]), np.cos(pos_x[..., 1::2])), axis=4).reshape(
        b, h, w, feats)
    pos_y = np.stack((np.sin(pos_y[..., 0::2]), np.cos(pos_y[..., 1::2])), axis=4).reshape(
        b, h, w, feats)
    out = np.concatenate((pos_y, pos_x), axis=3).reshape(b, h * w, dim)
    return out[0] if single else out


@pytest.mark.parametrize("h,w,dim", [(8, 8, 16), (3, 5, 32), (1, 7, 8)])
def test_sine_positions_match_numpy(h, w, dim):
    got = detr_sine_positions(h, w, dim)
    np.testing.assert_allclose(got, _sine_reference(h, w, dim), atol=2e-5)
    with pytest.raises(ValueError, match="divisible by 4"):
        detr_sine_positions(h, w, 18)


def test_masked_sine_positions_match_numpy():
    # Two images padded to 6x7 cells: one 4x5 real, one unpadded (all True), both against the
    # NumPy transcription of the official masked encoding.
    mask = np.zeros((2, 6, 7), bool)
    mask[0, :4, :5] = True
    mask[1] = True
    got = detr_sine_positions_masked(jnp.asarray(mask), 16)
    np.testing.assert_allclose(got, _sine_reference(6, 7, 16, not_mask=mask), atol=2e-5)
    # the real 4x5 corner is encoded as a lone 4x5 grid
    corner = np.asarray(got[0]).reshape(6, 7, 16)[:4, :5].reshape(20, 16)
    np.testing.assert_allclose(corner, detr_sine_positions(4, 5, 16), atol=1e-5)
    with pytest.raises(ValueError, match="batch, height, width"):
        detr_sine_positions_masked(jnp.ones((6, 7)), 16)


def _pixel_mask(batch=2):
    """Image 0 real in its top-left 20x24 pixels (5x6 of the 8x8 cells), image 1 unpadded."""
    mask = np.ones((batch, 32, 32), bool)
    mask[0, 20:, :] = False
    mask[0, :, 24:] = False
    return jnp.asarray(mask)


def test_grid_mask_is_nearest_downsampling():
    model = _model()
    mask = np.random.default_rng(0).random((2, 32, 32)) > 0.5
    got = np.asarray(model.grid_mask(jnp.asarray(mask)))
    gh, gw = model.grid_shape((32, 32))
    want = np.array([[[mask[b, (i * 32) // gh, (j * 32) // gw] for j in range(gw)]
                      for i in range(gh)] for b in range(2)])  # torch's nearest: floor(i H / h')
    np.testing.assert_array_equal(got, want)


def test_pixel_mask_hides_the_padded_cells(run):
    # Reference: the same model without the mask. An all-True mask changes nothing; with image
    # 0 padded, what the encoder and decoder read at its padded cells (input_proj's output
    # there) must not reach any output, and no query attends to a padded cell.
    model, variables, got = run
    x = _images()
    full = model.apply(variables, x, pixel_mask=jnp.ones((2, 32, 32), bool))
    np.testing.assert_allclose(full["logits"], got["out"]["logits"], atol=1e-5)
    mask = _pixel_mask()
    cells = np.asarray(model.grid_mask(mask)).reshape(2, -1)
    assert cells[0].sum() == 30 and cells[1].all()

    def scramble(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if "/".join(context.module.scope.path) == "input_proj":
            noise = 100.0 * jax.random.normal(jax.random.PRNGKey(9), out.shape)
            out = jnp.where(jnp.asarray(cells)[..., None], out, noise)
        return out

    masked = model.apply(variables, x, pixel_mask=mask)
    with nn.intercept_methods(scramble):
        scrambled = model.apply(variables, x, pixel_mask=mask)
    for key in ("logits", "boxes"):
        np.testing.assert_allclose(scrambled[key], masked[key], atol=1e-4)
    _, weights = model.apply(variables, x, mask, method="cross_attention_map")
    assert float(jnp.abs(weights[0][..., ~cells[0]]).max()) == 0.0
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    # without the mask the scrambled cells do change image 0's outputs (the check can fail)
    with nn.intercept_methods(scramble):
        unmasked = model.apply(variables, x)
    assert float(jnp.abs(unmasked["logits"][0] - got["out"]["logits"][0]).max()) > 1e-3
    with pytest.raises(ValueError, match="pixel_mask must be"):
        model.apply(variables, x, pixel_mask=jnp.ones((2, 32, 31), bool))


def test_cross_attention_map(run):
    model, _, got = run
    out, weights = got["mapped"]
    gh, gw = model.grid_shape((32, 32))
    assert weights.shape == (2, 2, 5, gh * gw)          # [b, heads, queries, h' * w']
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    assert bool(jnp.all(weights >= 0))
    # the reference attention path (for the weights) gives __call__'s boxes
    np.testing.assert_allclose(out["boxes"], got["out"]["boxes"], atol=1e-5)


def test_permuting_queries_permutes_outputs(run):
    _, _, got = run
    out, weights = got["mapped"]
    permuted, permuted_weights = got["permuted"]
    for key in ("logits", "boxes"):
        np.testing.assert_allclose(permuted[key], out[key][:, PERM], atol=1e-5)
        np.testing.assert_allclose(permuted["aux"][0][key], out["aux"][0][key][:, PERM],
                                   atol=1e-5)
    np.testing.assert_allclose(permuted_weights, weights[:, :, PERM], atol=1e-6)
    # and the queries are not interchangeable: different queries give different boxes
    assert not np.allclose(out["boxes"][:, 0], out["boxes"][:, 1])


def test_backbone_is_its_own_parameter_group(run):
    _, variables, _ = run
    mults = ParamGroups([("backbone/.*", 0.1)]).mults(variables["params"])
    flat = {jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_leaves_with_path(mults)}
    in_backbone = {k: m for k, m in flat.items() if k.startswith("['backbone']")}
    assert in_backbone and set(in_backbone.values()) == {0.1}
    assert set(m for k, m in flat.items() if k not in in_backbone) == {1.0}


def test_vit_backbone_token_grid():
    vit = dict(name="vit", num_classes=None, patch_size=8, hidden_size=16, depth=1, num_heads=2,
               mlp_dim=32, pool_type="gap")
    model = _model(backbone=vit)
    x = jnp.zeros((1, 32, 32, 3))
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    out = jax.eval_shape(model.apply, variables, x)
    assert out["boxes"].shape == (1, 5, 4) and model.grid_shape((32, 32)) == (4, 4)
    with pytest.raises(ValueError, match="class token"):
        token_model = _model(backbone={**vit, "pool_type": "token"})
        jax.eval_shape(token_model.init, jax.random.PRNGKey(0), x)


def test_bad_input_raises(run):
    model, variables, _ = run
    with pytest.raises(ValueError, match="batch, height, width, channels"):
        model.apply(variables, jnp.zeros((32, 32, 3)))
    with pytest.raises(ValueError, match="channel"):
        model.apply(variables, _images(channels=1))
    with pytest.raises(ValueError, match="backbone"):
        build_model("detr", backbone="cnn").init(jax.random.PRNGKey(0), _images())
    with pytest.raises(ValueError, match="num_heads"):
        _model(num_heads=3).init(jax.random.PRNGKey(0), _images())
