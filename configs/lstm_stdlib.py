"""A stateful byte-level LSTM language model on the Python standard library's source, offline,
on a CPU: the recurrent counterpart of configs/lm_stdlib.py (same data, same evaluation).

    python train.py --config configs/lstm_stdlib.py --workdir runs/lstm_stdlib

Data: `attn_jax.data.text.stdlib_corpus` as in lm_stdlib.py (5% of the files held out), UTF-8
bytes. Stateful (`config.data.stateful`): the train stream is cut into 32 contiguous tracks and
each step reads the next 128 bytes of every track, the LSTM state carried from step to step in
the train state (and in the checkpoints); it restarts at each document's leading eos. Truncated
BPTT: gradients flow back through the step's 128 bytes only (`tbptt_chunk=128`).
Model: embedding 256, 2 LSTM layers of 256 (Zaremba et al. 2014: dropout on the non-recurrent
connections), output layer tied to the embedding; 1.1M parameters (the GPT of lm_stdlib.py has
1.4M). Metrics: validation loss, perplexity and bits per byte, the validation stream read as 32
contiguous tracks with the state carried along each (the GPT sees 128-byte windows); a sample
continues "def " every evaluation.

Hardware: the 2-core CPU this repo is developed on, shared with other work (load ~5).
Sanity run (2026-12-02): `--config.total_steps=200` (warmup 100 kept, one evaluation at the end)
took 2 min 42 s wall at 1.4-1.8 steps/s and reached validation **3.388** bits per byte (loss 2.348
nats per byte, perplexity 10.5, next-byte accuracy 40.6%). The full 2000 steps (8.2M training
tokens, as lm_stdlib.py's GPT saw; GPT: 2.286 bits per byte at step 1000, 1.985 at 2000), measured
2026-12-02: 8 min 54 s wall (the CPU shared with other jobs throughout), validation
**1.806** bits per byte (1.992 at step 1000), loss 1.252 nats per byte, perplexity 3.50, next-byte
accuracy 65.8%. The LSTM's evaluation carries the state along each track, so it sees more context
than the GPT's 128-byte windows (BENCHMARKS.md).
"""

from attn_jax.train.config import base_config


def get_config(arg=None):
    config = base_config()
    config.task = "lm"
    config.data = dict(
        dataset="stdlib", validation_fraction=0.05, seed=0, tokenizer="byte", seq_len=128,
        stateful=True, tbptt_chunk=128)
    config.evals = dict(
        loss=dict(type="loss"),  # validation loss, perplexity, bits per byte
        sample=dict(type="sample_text", prompt="def ", length=120, num_samples=2,
                    temperature=0.8, top_p=0.95))
    config.model = dict(name="lstm_lm", emb_dim=256, hidden_dim=256, num_layers=2,
                        dropout_rate=0.1, tie_embeddings=True)
    config.batch_size = 32
    config.total_steps = 2000
    config.optim.update(name="adamw", learning_rate=2e-3, b2=0.99, weight_decay=0.01,
                        warmup_steps=100, schedule="cosine", end_fraction=0.1,
                        grad_clip_norm=1.0)
    config.log_every_steps = 100
    config.eval_every_steps = 1000
    config.checkpoint.every_steps = 500
    return config
