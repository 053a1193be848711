"""Hugging Face checkpoints (`model.safetensors` + `config.json`) <-> this repo's models.

Read with `safetensors.numpy` (no torch at run time). Two architectures:

- `ViTForImageClassification` (model_type 'vit') <-> `attn_jax.models.vit.ViT` with
  pool_type='token', posemb='learn', no representation layer. HF `nn.Linear` weights are
  `[out, in]` (transposed to Dense's `[in, out]`, and q/k/v/out split into `[in, heads,
  head_dim]` / `[heads, head_dim, out]`); the patch convolution is OIHW (-> HWIO). HF's
  LayerNorm eps (1e-12 by default) and `hidden_act` ('gelu' = exact) become the ViT's
  `layer_norm_epsilon` and `mlp_activation`. The classifier reads the CLS token after the final
  LayerNorm, as the repo's head does; `ViTModel`'s pooler (unused by the classifier) is left out.
- `GPT2LMHeadModel` (model_type 'gpt2') <-> `decoder_lm` with preset 'gpt2_small': GPT-2's
  `Conv1D` weights are already `[in, out]`; `c_attn` holds q, k and v side by side and is split;
  the output projection is tied to `wte`; `wpe` is the learned position table; `ln_f` the final
  norm; eps 1e-5; 'gelu_new' is the tanh approximation.

Keys may carry the task model's prefix ('vit.', 'transformer.') or not (the bare `ViTModel` /
`GPT2Model`); sharded checkpoints (`model.safetensors.index.json`) are read too. A checkpoint key
with no place in the repo's tree is kept as 'hf:<key>' so `config.init`'s report lists it as
unused.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import numpy as np

from attn_jax.pretrained.npz import flatten_tree, unflatten

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
CONFIG = "config.json"

# Converters by kind: (HF array, heads) -> repo array, and (repo array, heads) -> HF array.
_Conv = tuple[Callable[[np.ndarray, int], np.ndarray], Callable[[np.ndarray, int], np.ndarray]]
CONVERTERS: dict[str, _Conv] = {
    "same": (lambda x, h: x, lambda x, h: x),
    "linear": (lambda x, h: x.T, lambda x, h: x.T),  # Linear [out, in] <-> Dense [in, out]
    "conv": (lambda x, h: x.transpose(2, 3, 1, 0), lambda x, h: x.transpose(3, 2, 0, 1)),
    "heads_in": (lambda x, h: x.T.reshape(x.shape[1], h, -1),  # [h*d, in] <-> [in, h, d]
                 lambda x, h: x.reshape(x.shape[0], -1).T),
    "heads_out": (lambda x, h: x.T.reshape(h, -1, x.shape[0]),  # [out, h*d] <-> [h, d, out]
                  lambda x, h: x.reshape(-1, x.shape[-1]).T),
    "heads_bias": (lambda x, h: x.reshape(h, -1), lambda x, h: x.reshape(-1)),
    "conv1d_heads_in": (lambda x, h: x.reshape(x.shape[0], h, -1),  # [in, h*d] <-> [in, h, d]
                        lambda x, h: x.reshape(x.shape[0], -1)),
    "conv1d_heads_out": (lambda x, h: x.reshape(h, -1, x.shape[1]),  # [h*d, out] <-> [h, d, out]
                         lambda x, h: x.reshape(-1, x.shape[-1])),
    "row": (lambda x, h: x[None], lambda x, h: x[0]),  # wpe [P, d] <-> [1, P, d]
}
Row = tuple[str, str, str]  # (repo path, HF key without the task prefix, converter kind)


# ------------------------------------------------------------------------------------ ViT
def _vit_rows(depth: int) -> list[Row]:
    rows = [("cls", "embeddings.cls_token", "same"),
            ("posembed_input/pos_embedding", "embeddings.position_embeddings", "same"),
            ("embedding/kernel", "embeddings.patch_embeddings.projection.weight", "conv"),
            ("embedding/bias", "embeddings.patch_embeddings.projection.bias", "same"),
            ("Transformer/encoder_norm/scale", "layernorm.weight", "same"),
            ("Transformer/encoder_norm/bias", "layernorm.bias", "same")]
    for i in range(depth):
        b, l = f"Transformer/encoderblock_{i}/", f"encoder.layer.{i}."
        for ours, theirs in (("self_attention_norm", "layernorm_before"),
                             ("mlp_norm", "layernorm_after")):
            rows += [(b + ours + "/scale", l + theirs + ".weight", "same"),
                     (b + ours + "/bias", l + theirs + ".bias", "same")]
        for n in ("query", "key", "value"):
            rows += [(b + f"self_attention/{n}/kernel", l + f"attention.attention.{n}.weight",
                      "heads_in"),
                     (b + f"self_attention/{n}/bias", l + f"attention.attention.{n}.bias",
                      "heads_bias")]
        rows += [(b + "self_attention/out/kernel", l + "attention.output.dense.weight",
                  "heads_out"),
                 (b + "self_attention/out/bias", l + "attention.output.dense.bias", "same"),
                 (b + "mlp/Dense_0/kernel", l + "intermediate.dense.weight", "linear"),
                 (b + "mlp/Dense_0/bias", l + "intermediate.dense.bias", "same"),
                 (b + "mlp/Dense_1/kernel", l + "output.dense.weight", "linear"),
                 (b + "mlp/Dense_1/bias", l + "output.dense.bias", "same")]
    return rows


_VIT_HEAD = [("head/kernel", "classifier.weight", "linear"),
             ("head/bias", "classifier.bias", "same")]
_GELU = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
         "gelu_fast": "gelu_tanh", "relu": "relu"}


def _activation(config: dict[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    act = config.get(key, "gelu")
    if act not in _GELU or _GELU[act] not in allowed:
        raise ValueError(f"config.json {key}={act!r} has no counterpart here; supported: "
                         f"{sorted(k for k, v in _GELU.items() if v in allowed)}")
    return _GELU[act]


def _vit_model_config(c: dict[str, Any]) -> dict[str, Any]:
    num_labels = len(c["id2label"]) if c.get("id2label") else c.get("num_labels", 2)
    return dict(num_classes=num_labels, patch_size=int(c["patch_size"]),
                hidden_size=c["hidden_size"], depth=c["num_hidden_layers"],
                num_heads=c["num_attention_heads"], mlp_dim=c["intermediate_size"],
                layer_norm_epsilon=c.get("layer_norm_eps", 1e-12),
                mlp_activation=_activation(c, "hidden_act", ("gelu", "gelu_tanh")),
                pool_type="token", posemb="learn", representation_size=None)


def _vit_hf_config(model: Any, flat: dict[str, np.ndarray]) -> dict[str, Any]:
    bad = {k: getattr(model, k) for k, ok in (("pool_type", "token"), ("posemb", "learn"),
                                              ("representation_size", None))
           if getattr(model, k) != ok}
    ph, pw = model.patch_hw
    if bad or ph != pw or model.num_classes is None:
        raise ValueError("ViTForImageClassification has a class token, a learned position "
                         "table, square patches, a head and no representation layer; this ViT "
                         f"has {bad}, patch {(ph, pw)}, num_classes={model.num_classes}")
    tokens = flat["posembed_input/pos_embedding"].shape[1]
    side = int(round((tokens - 1) ** 0.5))
    labels = {str(i): f"LABEL_{i}" for i in range(model.num_classes)}
    return {"architectures": ["ViTForImageClassification"], "model_type": "vit",
            "hidden_size": model.hidden_size, "num_hidden_layers": model.depth,
            "num_attention_heads": model.num_heads, "intermediate_size": model.mlp_dim,
            "hidden_act": {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}[
                model.mlp_activation],
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
            "layer_norm_eps": model.layer_norm_epsilon, "image_size": side * ph,
            "patch_size": ph, "num_channels": int(flat["embedding/kernel"].shape[2]),
            "qkv_bias": True, "id2label": labels, "label2id": {v: int(k) for k, v in
                                                                labels.items()},
            "initializer_range": 0.02, "dtype": "float32"}


# ------------------------------------------------------------------------------------ GPT-2
def _gpt2_rows(depth: int) -> list[Row]:
    rows = [("embedding/embedding", "wte.weight", "same"),
            ("decoder/embedder/position_embedding/pos_embedding", "wpe.weight", "row"),
            ("decoder/final_norm/scale", "ln_f.weight", "same"),
            ("decoder/final_norm/bias", "ln_f.bias", "same")]
    for i in range(depth):
        b, l = f"decoder/layer_{i}/", f"h.{i}."
        for ours, theirs in (("self_attention_norm", "ln_1"), ("mlp_norm", "ln_2")):
            rows += [(b + ours + "/scale", l + theirs + ".weight", "same"),
                     (b + ours + "/bias", l + theirs + ".bias", "same")]
        for n in ("query", "key", "value"):  # c_attn split by _gpt2_split
            rows += [(b + f"self_attention/{n}/kernel", l + f"attn.c_attn.{n}.weight",
                      "conv1d_heads_in"),
                     (b + f"self_attention/{n}/bias", l + f"attn.c_attn.{n}.bias",
                      "heads_bias")]
        rows += [(b + "self_attention/out/kernel", l + "attn.c_proj.weight", "conv1d_heads_out"),
                 (b + "self_attention/out/bias", l + "attn.c_proj.bias", "same"),
                 (b + "mlp/Dense_0/kernel", l + "mlp.c_fc.weight", "same"),
                 (b + "mlp/Dense_0/bias", l + "mlp.c_fc.bias", "same"),
                 (b + "mlp/Dense_1/kernel", l + "mlp.c_proj.weight", "same"),
                 (b + "mlp/Dense_1/bias", l + "mlp.c_proj.bias", "same")]
    return rows


def _gpt2_model_config(c: dict[str, Any]) -> dict[str, Any]:
    if c.get("scale_attn_by_inverse_layer_idx") or not c.get("scale_attn_weights", True):
        raise ValueError("GPT-2 attention scaled other than by 1/sqrt(head_dim) "
                         "(scale_attn_by_inverse_layer_idx / scale_attn_weights) is not supported")
    d = c["n_embd"]
    return dict(preset="gpt2_small", vocab_size=c["vocab_size"], emb_dim=d,
                num_heads=c["n_head"], num_decoder_layers=c["n_layer"],
                mlp_dim=c.get("n_inner") or 4 * d, max_len=c["n_positions"],
                layer_norm_epsilon=c.get("layer_norm_epsilon", 1e-5),
                activation=_activation(c, "activation_function", ("gelu", "gelu_tanh", "relu")),
                bos_id=c.get("bos_token_id", 50256))


def _gpt2_hf_config(model: Any, flat: dict[str, np.ndarray]) -> dict[str, Any]:
    cfg = model.config
    need = dict(norm="pre", final_norm=True, positions="learned", scale_embeddings=False,
                tie_output=True, use_bias=True)
    bad = {k: getattr(cfg, k) for k, v in need.items() if getattr(cfg, k) != v}
    if cfg.num_kv_heads not in (None, cfg.num_heads) or cfg.qkv_width != cfg.emb_dim:
        bad.update(num_kv_heads=cfg.num_kv_heads, qkv_dim=cfg.qkv_dim)
    if bad:
        raise ValueError(f"GPT2LMHeadModel is {need}, all heads of width emb_dim / num_heads; "
                         f"this decoder_lm differs: {bad}")
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": cfg.vocab_size, "n_positions": cfg.max_len, "n_embd": cfg.emb_dim,
            "n_layer": cfg.num_decoder_layers, "n_head": cfg.num_heads, "n_inner": cfg.mlp_dim,
            "activation_function": {"gelu_tanh": "gelu_new", "gelu": "gelu",
                                    "relu": "relu"}[cfg.activation],
            "resid_pdrop": cfg.dropout_rate, "embd_pdrop": cfg.dropout_rate,
            "attn_pdrop": cfg.attention_dropout_rate, "layer_norm_epsilon":
                cfg.layer_norm_epsilon, "bos_token_id": cfg.bos_id, "eos_token_id": cfg.bos_id,
            "tie_word_embeddings": True, "initializer_range": cfg.init_std or 0.02,
            "dtype": "float32"}


# ------------------------------------------------------------------------------------ tables
ARCHITECTURES = {
    # model_type: (task-model prefix, registry name, layer-count key, heads key, rows, example)
    "vit": ("vit.", "vit", "num_hidden_layers", "num_attention_heads", _vit_rows,
            "vit.embeddings.cls_token"),
    "gpt2": ("transformer.", "decoder_lm", "n_layer", "n_head", _gpt2_rows,
             "transformer.wte.weight"),
}


def hf_model_config(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(registry name, keyword fields) of the repo model a HF config.json describes:
    `build_model(*hf_model_config(config))` has the checkpoint's architecture."""
    kind = config.get("model_type")
    if kind == "vit":
        return "vit", _vit_model_config(config)
    if kind == "gpt2":
        return "decoder_lm", _gpt2_model_config(config)
    raise ValueError(f"config.json model_type={kind!r}: format 'hf' reads {sorted(ARCHITECTURES)}"
                     " (ViTForImageClassification, GPT2LMHeadModel)")


def _files(path: str) -> tuple[str, list[str]]:
    """(config.json path, safetensors files) of a HF directory or one of its weight files."""
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    config = os.path.join(directory, CONFIG)
    if os.path.isfile(path):
        weights = [path]
    elif os.path.isfile(os.path.join(directory, WEIGHTS)):
        weights = [os.path.join(directory, WEIGHTS)]
    elif os.path.isfile(os.path.join(directory, INDEX)):
        with open(os.path.join(directory, INDEX)) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        weights = [os.path.join(directory, s) for s in shards]
    else:
        raise FileNotFoundError(f"{path}: format 'hf' expects a directory with {WEIGHTS} (or "
                                f"{INDEX}) and {CONFIG}, or a .safetensors file beside {CONFIG}")
    if not os.path.isfile(config):
        raise FileNotFoundError(f"{path}: no {CONFIG} in {directory} (format 'hf' needs it)")
    return config, weights


def read_hf(path: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(config.json as a dict, {key: NumPy array}) of a HF checkpoint directory or file."""
    from safetensors.numpy import load_file

    config_path, weights = _files(path)
    with open(config_path) as f:
        config = json.load(f)
    state: dict[str, np.ndarray] = {}
    for w in weights:
        state.update(load_file(w))
    return config, state


def hf_to_repo(config: dict[str, Any], state: dict[str, np.ndarray], where: str = "checkpoint"
               ) -> dict[str, np.ndarray]:
    """A HF state dict as this repo's flat {path: array} (see the module docstring)."""
    hf_model_config(config)  # the architecture is supported
    kind = config["model_type"]
    prefix, _, layers_key, heads_key, rows_fn, example = ARCHITECTURES[kind]
    state = dict(state)
    if not any(k.startswith(prefix) for k in state):
        prefix = ""
    state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
    heads = int(config[heads_key])
    flat: dict[str, np.ndarray] = {}
    if kind == "gpt2":
        for k in [k for k in state if k.endswith((".attn.bias", ".attn.masked_bias"))]:
            del state[k]  # the causal-mask buffers older versions saved
        for k in [k for k in state if k.endswith("attn.c_attn.weight") or
                  k.endswith("attn.c_attn.bias")]:
            base, leaf = k.rsplit(".", 1)
            for n, part in zip(("query", "key", "value"), np.split(state.pop(k), 3, axis=-1)):
                state[f"{base}.{n}.{leaf}"] = part
        lm_head = state.pop("lm_head.weight", None)
        if lm_head is not None and "wte.weight" in state and \
                not np.array_equal(lm_head, state["wte.weight"]):
            flat["decoder/logits/kernel"] = lm_head.T  # an untied output layer
    if kind == "vit" and not config.get("qkv_bias", True):
        width = int(config["hidden_size"])
        for i in range(int(config[layers_key])):
            for n in ("query", "key", "value"):
                state[f"encoder.layer.{i}.attention.attention.{n}.bias"] = np.zeros(width,
                                                                                    np.float32)
    rows = rows_fn(int(config[layers_key])) + (_VIT_HEAD if kind == "vit" else [])
    for ours, theirs, conv in rows:
        if theirs not in state:
            if ours.startswith("head/"):
                continue  # a bare ViTModel: no classifier
            raise ValueError(
                f"{where}: no key {prefix + theirs!r}: not the layout format 'hf' expects for "
                f"model_type {kind!r} (keys like {example!r}); its keys start "
                f"{sorted(state)[:4]}")
        flat[ours] = np.asarray(CONVERTERS[conv][0](np.asarray(state.pop(theirs)), heads))
    flat.update({f"hf:{k}": v for k, v in state.items()})
    return flat


def load_hf(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config.json, this repo's nested parameter tree) of a HF ViT / GPT-2 checkpoint; keys
    with no place in the tree are dropped here (`config.init` reports them)."""
    config, state = read_hf(path)
    flat = hf_to_repo(config, state, where=path)
    return config, unflatten({k: v for k, v in flat.items() if not k.startswith("hf:")})


def repo_to_hf(model: Any, params: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(config.json, HF state dict) of a repo `ViT` or `decoder_lm` (GPT-2 layout) and its
    params (nested, boxed or not)."""
    flat = flatten_tree(params)
    name = type(model).__name__
    if name == "ViT":
        config, kind = _vit_hf_config(model, flat), "vit"
    elif name == "DecoderOnlyLM":
        config, kind = _gpt2_hf_config(model, flat), "gpt2"
    else:
        raise ValueError(f"no Hugging Face layout for {name}; save_hf writes ViT "
                         "(ViTForImageClassification) and DecoderOnlyLM (GPT2LMHeadModel)")
    prefix, _, layers_key, heads_key, rows_fn, _ = ARCHITECTURES[kind]
    heads = int(config[heads_key])
    state = {}
    for ours, theirs, conv in rows_fn(int(config[layers_key])):
        if ours not in flat:
            raise ValueError(f"the params lack {ours!r} (a {name} with these fields has it)")
        state[prefix + theirs] = CONVERTERS[conv][1](flat[ours], heads)
    if kind == "vit":
        state.update({theirs: CONVERTERS[conv][1](flat[ours], heads)
                      for ours, theirs, conv in _VIT_HEAD})
    else:  # c_attn = [q | k | v] along the output axis
        for i in range(int(config[layers_key])):
            for leaf in ("weight", "bias"):
                base = f"{prefix}h.{i}.attn.c_attn"
                state[f"{base}.{leaf}"] = np.concatenate(
                    [state.pop(f"{base}.{n}.{leaf}") for n in ("query", "key", "value")], -1)
    return config, {k: np.ascontiguousarray(v, np.float32) for k, v in state.items()}


def save_hf(model: Any, params: Any, directory: str) -> None:
    """Write `directory/model.safetensors` and `directory/config.json` so that
    `transformers.AutoModel*.from_pretrained(directory)` loads the model (float32)."""
    from safetensors.numpy import save_file

    config, state = repo_to_hf(model, params)
    os.makedirs(directory, exist_ok=True)
    save_file(state, os.path.join(directory, WEIGHTS), metadata={"format": "pt"})
    with open(os.path.join(directory, CONFIG), "w") as f:
        json.dump(config, f, indent=2)
