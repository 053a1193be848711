"""GPT-2 small on the One Billion Word benchmark (Chelba et al. 2013), GPU/TPU.

    tfds build lm1b --file_format=array_record     # once, with network + TF
    python train.py --config configs/lm1b.py --workdir runs/lm1b

Model: `preset='gpt2_small'` (124M parameters with GPT-2's vocabulary; here a SentencePiece
vocabulary of 32000 pieces trained on 2M training sentences and kept in the workdir), one
sentence per row, up to 128 tokens. Metrics: test loss, perplexity and bits per byte.

Attention dropout is 0 (the preset's 0.1 is overridden): dropout on the attention weights
only runs in the einsum "reference" path, so it would silently take every attention off the
fused kernel. With 0, on an NVIDIA GPU (sm80+) the causal self-attention runs cuDNN's fused
flash kernel ("cudnn": bfloat16, head_dim 768 / 12 = 64, no padding mask), as
`attn_jax.attention` chooses for implementation=None; elsewhere XLA's. Residual and embedding
dropout (0.1) stay.

Hardware: one accelerator host (mesh data=-1). Time: not yet measured. Result: not yet measured.
"""

from attn_jax.train.config import base_config


def get_config(arg=None):
    config = base_config()
    config.task = "lm"
    config.data = dict(
        dataset="lm1b", data_dir="", tokenizer="sentencepiece", vocab_size=32000,
        spm_max_sentences=2_000_000, seq_len=128)
    config.evals = dict(
        loss=dict(type="loss"),
        sample=dict(type="sample_text", prompt="The", length=64, num_samples=4,
                    temperature=1.0, top_k=40))
    # attention_dropout_rate=0: see the docstring (the fused cuDNN kernel takes no dropout).
    config.model = dict(name="decoder_lm", preset="gpt2_small", max_len=128,
                        attention_dropout_rate=0.0)
    config.dtype = "bfloat16"
    config.batch_size = 256
    config.total_steps = 100_000
    config.optim.update(name="adamw", learning_rate=6e-4, b2=0.95, weight_decay=0.1,
                        warmup_steps=2000, schedule="cosine", end_fraction=0.1)
    config.log_every_steps = 100
    config.eval_every_steps = 10_000
    config.checkpoint.every_steps = 2000
    return config
