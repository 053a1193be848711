"""Decoder-only language models: training tokens/s with model FLOPs utilisation, and KV-cached
decoding tokens/s.

    python benchmarks/bench_lm.py                                   # configs/lm_stdlib.py, CPU
    python benchmarks/bench_lm.py --configs lm_stdlib,gpt2_small --batch 16 --dtype bfloat16

`--configs` takes config files (`configs/<name>.py` with task 'lm': the model, sequence length,
batch, optimizer and vocabulary of the config: 259 for bytes, data.vocab_size for SentencePiece)
or a preset name (gpt2_small, gpt2_medium: vocab 50257, --seq-len tokens, default 1024).

Training: the trainer's own jitted step (`attn_jax.train.loop.make_train_step`: forward with
dropout, next-token cross-entropy, backward, the config's optax update, state donated) on random
token ids. MFU uses model FLOPs per token, 6 N + 12 L d T (Chowdhery et al. 2022, app. B): N the
parameters without the position table (the tied embedding counts once, as the output matmul),
L layers, d width, T sequence length; the hardware FLOPs that XLA's cost analysis counts for the
compiled step are printed beside them. Peaks: the table in `_common.PEAKS` or --peak-tflops.

Decoding: `attn_jax.decoding.generate` jitted as one `lax.while_loop`, greedy, from a one-token
prompt for --decode-len new tokens per row with the KV cache; EOS never stops a row (eos_id -1),
so every row decodes the full length. tokens/s counts generated tokens over all rows.
"""

from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from attn_jax import decoding
from attn_jax.data.tokenizers import ByteTokenizer
from attn_jax.losses import cross_entropy_with_label_smoothing
from attn_jax.models import build_model
from attn_jax.models.transformer_presets import PRESETS, transformer_config
from _common import header, load_config, mfu, param_count, time_train_step, timed_call


class _RandomTokensTask:
    """Next-token cross-entropy on a fixed batch of random ids: the model, not the data."""

    def __init__(self, model):
        self.model = model

    def loss(self, params, batch, rng, step):
        logits = self.model.apply({"params": params}, batch["inputs"], deterministic=False,
                                  rngs={"dropout": rng})
        weights = jnp.ones(batch["targets"].shape, jnp.float32)
        loss, _ = cross_entropy_with_label_smoothing(logits, batch["targets"], weights, 0.0)
        return loss, {}


def _setup(name: str, args: argparse.Namespace):
    """(model fields, vocab, seq_len, batch, dtype, optimizer config) of a config or preset."""
    if name in PRESETS:
        fields = {"preset": name}
        optim = load_config("lm_stdlib").optim  # AdamW; only its cost matters here
        return (fields, None, args.seq_len or 1024, args.batch or 8,
                args.dtype or "float32", optim)
    config = load_config(name)
    if config.task != "lm":
        raise SystemExit(f"configs/{name}.py has task {config.task!r}; this script times 'lm'")
    fields = dict(config.model)
    fields.pop("name")
    data = config.data
    vocab = (ByteTokenizer().vocab_size if data.get("tokenizer", "byte") == "byte"
             else int(data.vocab_size))
    return (fields, vocab, args.seq_len or int(data.get("seq_len", 256)),
            args.batch or config.batch_size, args.dtype or config.dtype, config.optim)


def model_flops_per_token(params, cfg, seq_len: int) -> float:
    """6 N + 12 L d T, N without the learned position table."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    n = sum(int(x.size) for path, x in leaves if "pos_embedding" not in jax.tree_util.keystr(path))
    return 6 * n + 12 * cfg.num_decoder_layers * cfg.emb_dim * seq_len


def bench(name: str, args: argparse.Namespace) -> str:
    fields, vocab, seq_len, batch, dtype, optim = _setup(name, args)
    if vocab is not None:
        fields["vocab_size"] = vocab
    dropout = getattr(args, "dropout", None)
    if dropout is not None:
        fields.update(dropout_rate=dropout, attention_dropout_rate=dropout)
    max_len = transformer_config(**fields).max_len
    if seq_len > max_len:
        raise SystemExit(f"{name}: --seq-len {seq_len} exceeds the model's max_len {max_len}")
    model = build_model("decoder_lm", dtype=dtype, **fields)
    cfg = model.config
    ids = jax.random.randint(jax.random.PRNGKey(0), (batch, seq_len + 1), 0, cfg.vocab_size)
    data = {"inputs": ids[:, :-1], "targets": ids[:, 1:]}
    params = jax.jit(lambda: nn.unbox(model.init(
        {"params": jax.random.PRNGKey(1)}, data["inputs"][:1])["params"]))()
    n_params = param_count(params)
    flops_per_token = model_flops_per_token(params, cfg, seq_len)
    sec, hw_flops, params = time_train_step(_RandomTokensTask(model), params, optim, data, args.iters)
    tokens = batch * seq_len
    achieved = flops_per_token * tokens / sec / 1e12

    decode_len = min(args.decode_len, cfg.max_len)
    prompt = jnp.ones((args.decode_batch, 1), jnp.int32)

    @jax.jit
    def generate(params, prompt, rng):
        return decoding.generate(model, params, prompt, rng, max_len=decode_len, eos_id=-1,
                                 temperature=0.0)

    _, decode_sec = timed_call(generate, params, prompt, jax.random.PRNGKey(3),
                               repeats=args.decode_repeats)
    device = jax.devices()[0].device_kind
    return (f"| {name} | {device} | {n_params / 1e6:.2f}M | {batch}x{seq_len} "
            f"| {dtype} | {sec * 1e3:.1f} | {tokens / sec:,.0f} "
            f"| {flops_per_token / 1e6:.2f} | {hw_flops / tokens / 1e6:.2f} "
            f"| {achieved:.3f} | {mfu(achieved, dtype, args.peak_tflops)} "
            f"| {args.decode_batch}x{decode_len} | {args.decode_batch * decode_len / decode_sec:,.0f} "
            f"| {decode_sec * 1e3 / decode_len:.2f} |")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="lm_stdlib",
                        help=f"config files with task 'lm', or presets {sorted(PRESETS)}")
    parser.add_argument("--batch", type=int, default=None, help="default: the config's (8)")
    parser.add_argument("--seq-len", type=int, default=None,
                        help="default: the config's data.seq_len (1024 for a preset)")
    parser.add_argument("--dtype", default=None, help="default: the config's (float32)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--dropout", type=float, default=None,
                        help="dropout and attention dropout of the model (default: the config's or "
                             "preset's; GPT-2's attention dropout 0.1 takes the reference attention "
                             "path, 0 the fused kernel)")
    parser.add_argument("--decode-batch", type=int, default=8)
    parser.add_argument("--decode-len", type=int, default=128)
    parser.add_argument("--decode-repeats", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=None)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {time.strftime('%Y-%m-%d')}")
    print(header(["config", "device", "params", "batch x seq", "dtype", "ms/step",
                  "train tokens/s", "model MFLOP/token", "XLA MFLOP/token", "model TFLOP/s",
                  "MFU", "decode batch x len", "decode tokens/s", "ms/decode step"]))
    for name in args.configs.split(","):
        print(bench(name, args), flush=True)


if __name__ == "__main__":
    main()
