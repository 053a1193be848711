"""The paper's base Transformer on WMT'14 English -> German (Vaswani et al. 2017), GPU/TPU.

    tfds build wmt14_translate/de-en --file_format=array_record   # once, with network + TF
    python train.py --config configs/transformer_wmt14.py --workdir runs/transformer_wmt14

Model: `preset='base'` (d 512, 6+6 layers, 8 heads, d_ff 2048, dropout 0.1, shared tied
embeddings), a shared SentencePiece vocabulary of 32000 pieces trained on the training pairs and
kept in the workdir (the paper: 37000 BPE). Adam(0.9, 0.98, 1e-9), 4000 warmup steps then inverse
square root decay peaking at 512^-0.5 * 4000^-0.5 = 7e-4 (sec. 5.3), label smoothing 0.1,
100k steps. Decoding: beam 4, length penalty 0.6 (sec. 6.1); BLEU is sacrebleu's detokenized
corpus BLEU on newstest2014 (the paper reports tokenized BLEU, 27.3 for the base model).

Attention dropout is 0 (the preset's 0.1 is overridden): dropout on the attention weights
only runs in the einsum "reference" path, so it would silently take every attention off the
fused kernel. With 0, on an NVIDIA GPU (sm80+) each attention runs cuDNN's fused flash kernel
("cudnn": bfloat16, head_dim 512 / 8 = 64, even lengths 128 with the padding masks), as
`attn_jax.attention` chooses for implementation=None; elsewhere XLA's. The paper regularises
with residual and embedding dropout (P_drop 0.1, sec. 5.4), which stays.

Hardware: one accelerator host (mesh data=-1). Time: not yet measured. Result: not yet measured.
"""

from attn_jax.train.config import base_config


def get_config(arg=None):
    config = base_config()
    config.task = "seq2seq"
    config.data = dict(
        dataset="wmt14_de_en", data_dir="", source_lang="en", target_lang="de",
        tokenizer="sentencepiece", vocab_size=32000, spm_model_type="unigram",
        spm_train_pairs=1_000_000, max_src_len=128, max_tgt_len=128,
        eval_splits=["validation", "test"])
    config.evals = dict(
        loss=dict(type="loss"),
        decode=dict(type="decode", splits=("test",), beam_size=4, length_penalty=0.6,
                    max_decode_len=178, num_examples_shown=8))
    # attention_dropout_rate=0: see the docstring (the fused cuDNN kernel takes no dropout).
    config.model = dict(name="transformer", preset="base", max_len=256,
                        attention_dropout_rate=0.0)
    config.dtype = "bfloat16"
    config.batch_size = 512
    config.total_steps = 100_000
    config.label_smoothing = 0.1
    config.optim.update(name="adam", learning_rate=7e-4, b1=0.9, b2=0.98, eps=1e-9,
                        warmup_steps=4000, schedule="rsqrt", grad_clip_norm=0.0)
    config.log_every_steps = 100
    config.eval_every_steps = 10_000
    config.checkpoint.every_steps = 2000
    return config
