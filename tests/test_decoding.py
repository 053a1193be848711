"""Tests of attn_jax.decoding: greedy, sampling and beam search.

Most tests drive the decoders with table models whose exact answers NumPy can enumerate; the
last ones run them over the cached Transformer models and check against full forward passes.
"""

from __future__ import annotations

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax import decoding
from attn_jax.models.transformer import DecoderOnlyLM, EncoderDecoder, TransformerConfig

PAD, EOS = 0, 1


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64) - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


class HistoryTable:
    """A model whose next-token logits depend on the whole history (start token + generated
    tokens), looked up in a random table by a base-(V+1) code of the prefix. The code lives in
    the cache, so a beam search that reorders beams without reordering the cache is wrong."""

    def __init__(self, vocab: int, max_len: int, seed: int = 0):
        self.vocab, self.max_len = vocab, max_len
        rows = (vocab + 1) ** (max_len + 1)
        self.table = np.random.default_rng(seed).normal(0, 2, (rows, vocab)).astype(np.float32)

    def _next(self, code, token):
        return code * (self.vocab + 1) + token + 1

    def step_fn(self):
        table = jnp.asarray(self.table)

        def tokens_to_logits(ids, cache):
            code = self._next(cache["code"], ids[:, 0])
            return table[code], {"code": code, "steps": cache["steps"] + 1}

        return tokens_to_logits

    def cache(self, rows: int):
        return {"code": jnp.zeros((rows,), jnp.int32), "steps": jnp.zeros((), jnp.int32)}

    def logprobs(self, start: int, seq) -> list[np.ndarray]:
        """Log-probabilities of each next token along `seq` (inputs: start, seq[:-1])."""
        code, out = 0, []
        for token in (start, *seq[:-1]):
            code = self._next(code, token)
            out.append(log_softmax(self.table[code]))
        return out

    def greedy(self, start: int, eos: int) -> list[int]:
        seq: list[int] = []
        code, token = 0, start
        while len(seq) < self.max_len:
            code = self._next(code, token)
            token = int(np.argmax(self.table[code]))
            seq.append(token)
            if token == eos:
                break
        return seq + [PAD] * (self.max_len - len(seq))

    def ranked_hypotheses(self, start: int, eos: int, alpha: float):
        """Every EOS-terminated sequence of length <= max_len with its GNMT score, best first."""
        scored = []
        for n in range(1, self.max_len + 1):
            for seq in itertools.product(range(self.vocab), repeat=n):
                if seq[-1] != eos or eos in seq[:-1]:
                    continue
                lp = sum(p[t] for p, t in zip(self.logprobs(start, seq), seq))
                scored.append((lp / ((5 + n) / 6) ** alpha, seq))
        return sorted(scored, key=lambda x: -x[0])


STARTS = jnp.array([0, 2, 3])


# --------------------------------------------------------------------------------------------
# Beam search.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_exhaustive_beam_search_equals_enumeration(alpha):
    """Reference: brute-force enumeration of all EOS-terminated sequences in NumPy. With 64
    beams nothing is pruned (at most 27 live prefixes, and their 108 extensions fit in the
    2 * 64 candidates), so the returned top hypotheses and their length-penalised scores must
    be the exact top ranks."""
    model = HistoryTable(vocab=4, max_len=4)
    beam = 64
    cache = decoding.tile_beams(model.cache(3), beam)
    seqs, scores = decoding.beam_search(
        model.step_fn(), cache, STARTS, beam_size=beam, max_len=4, eos_id=EOS, alpha=alpha
    )
    for b, start in enumerate(np.asarray(STARTS)):
        ranked = model.ranked_hypotheses(int(start), EOS, alpha)[:10]
        np.testing.assert_allclose(scores[b, :10], [s for s, _ in ranked], rtol=1e-5)
        for k, (_, seq) in enumerate(ranked[:3]):  # well separated in this table
            expected = list(seq) + [PAD] * (4 - len(seq))
            np.testing.assert_array_equal(seqs[b, k], expected)


def _markov_step_fn(probs: np.ndarray):
    """A model whose next-token distribution depends only on the last token."""
    with np.errstate(divide="ignore"):
        table = jnp.asarray(np.log(probs), jnp.float32)

    def tokens_to_logits(ids, cache):
        return table[ids[:, 0]], cache

    return tokens_to_logits


# Tokens: 0 pad, 1 EOS, 2 = A, 3 = B; the start token is 0. Greedy takes A (0.55) and then
# EOS (0.4): p = 0.22. The best sequence is B EOS: p = 0.45 * 0.9 = 0.405.
GREEDY_TRAP = np.array(
    [
        [0.0, 0.0, 0.55, 0.45],  # after start
        [1.0, 0.0, 0.0, 0.0],  # after EOS (never used)
        [0.0, 0.4, 0.3, 0.3],  # after A
        [0.0, 0.9, 0.05, 0.05],  # after B
    ]
)


def test_beam_search_beats_greedy_when_greedy_is_suboptimal():
    """Reference: the hand-computed probabilities of GREEDY_TRAP. Greedy returns A EOS
    (log 0.22); beam 1 reproduces it; beams >= 2 find B EOS (log 0.405); no beam size scores
    below greedy. Zero probabilities (-inf logits) must not produce NaNs or fake hypotheses."""
    fn = _markov_step_fn(GREEDY_TRAP)
    start = jnp.zeros((1,), jnp.int32)
    greedy = decoding.greedy_search(fn, {}, start, max_len=4, eos_id=EOS)
    np.testing.assert_array_equal(greedy, [[2, 1, PAD, PAD]])
    for beam in (1, 2, 3, 4):
        seqs, scores = decoding.beam_search(
            fn, {}, start, beam_size=beam, max_len=4, eos_id=EOS, alpha=0.0
        )
        assert not np.isnan(np.asarray(scores)).any()
        expected = [2, 1] if beam == 1 else [3, 1]
        np.testing.assert_array_equal(seqs[0, 0], expected + [PAD, PAD])
        np.testing.assert_allclose(scores[0, 0], np.log(0.22 if beam == 1 else 0.405), rtol=1e-5)
        assert scores[0, 0] >= np.log(0.22) - 1e-6
    # Two steps allow exactly 2 finished hypotheses; the other slots must stay empty (-inf).
    _, scores = decoding.beam_search(fn, {}, start, beam_size=4, max_len=2, eos_id=EOS, alpha=0.0)
    np.testing.assert_allclose(scores[0, :2], np.log([0.405, 0.22]), rtol=1e-5)
    assert np.all(np.isneginf(np.asarray(scores[0, 2:])))
    # With an EOS of probability 0 (token 0) nothing finishes: the live beams come back.
    seqs, scores = decoding.beam_search(fn, {}, start, beam_size=4, max_len=2, eos_id=0,
                                        alpha=0.0)
    np.testing.assert_array_equal(seqs[0, :2], [[3, 1], [2, 1]])
    np.testing.assert_allclose(scores[0], np.log([0.405, 0.22, 0.165, 0.165]), rtol=1e-5)


def test_beam_search_stops_each_sequence_at_eos():
    """Every returned hypothesis has exactly one EOS (or none when truncated), padding after
    it, and a score equal to its NumPy log-probability / lp(length)."""
    model = HistoryTable(vocab=5, max_len=6, seed=3)
    beam, alpha = 3, 0.6
    seqs, scores = decoding.beam_search(
        model.step_fn(), decoding.tile_beams(model.cache(3), beam), STARTS, beam_size=beam,
        max_len=6, eos_id=EOS, alpha=alpha,
    )
    seqs, scores = np.asarray(seqs), np.asarray(scores)
    for b, start in enumerate(np.asarray(STARTS)):
        assert np.all(np.diff(scores[b]) <= 0)
        for k in range(beam):
            seq = list(seqs[b, k])
            n = seq.index(EOS) + 1 if EOS in seq else len(seq)
            assert all(t == PAD for t in seq[n:]), seq
            lp = sum(p[t] for p, t in zip(model.logprobs(int(start), seq[:n]), seq[:n]))
            np.testing.assert_allclose(scores[b, k], lp / ((5 + n) / 6) ** alpha, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Greedy and sampling.
# --------------------------------------------------------------------------------------------


def test_greedy_matches_numpy_and_pads_after_eos():
    """Reference: a NumPy greedy walk over the table; rows stop at different steps."""
    model = HistoryTable(vocab=4, max_len=5, seed=1)
    out = decoding.greedy_search(model.step_fn(), model.cache(3), STARTS, max_len=5, eos_id=EOS)
    expected = [model.greedy(int(s), EOS) for s in np.asarray(STARTS)]
    np.testing.assert_array_equal(out, expected)
    lengths = [row.index(EOS) + 1 if EOS in row else 5 for row in expected]
    assert len(set(lengths)) > 1, "the table should end rows at different steps"


def test_top_k_one_and_temperature_zero_sampling_equal_greedy():
    model = HistoryTable(vocab=4, max_len=5, seed=1)
    fn, cache = model.step_fn(), model.cache(3)
    greedy = decoding.greedy_search(fn, cache, STARTS, max_len=5, eos_id=EOS)
    for kwargs in (dict(top_k=1), dict(temperature=0.0), dict(top_p=1e-6)):
        out = decoding.sample(fn, cache, STARTS, jax.random.key(7), max_len=5, eos_id=EOS,
                              **kwargs)
        np.testing.assert_array_equal(out, greedy, err_msg=str(kwargs))


def test_sampling_is_deterministic_per_seed():
    model = HistoryTable(vocab=4, max_len=5, seed=2)
    fn, cache, starts = model.step_fn(), model.cache(64), jnp.zeros((64,), jnp.int32)

    def run(seed):
        return np.asarray(
            decoding.sample(fn, cache, starts, jax.random.key(seed), max_len=5, eos_id=EOS)
        )

    np.testing.assert_array_equal(run(0), run(0))
    assert (run(0) != run(1)).any()


def _filtered_probs(logits, temperature, top_k, top_p):
    """NumPy reference of temperature -> top-k -> top-p filtering."""
    p = np.exp(log_softmax(logits / temperature))
    order = np.argsort(-p)
    keep = np.zeros_like(p, bool)
    keep[order[: top_k or len(p)]] = True
    if top_p is not None:
        q = np.where(keep, p, 0.0)
        q /= q.sum()
        cum = np.cumsum(q[order]) - q[order]
        keep &= np.isin(np.arange(len(p)), order[cum < top_p])
    q = np.where(keep, p, 0.0)
    return q / q.sum()


@pytest.mark.parametrize(
    "temperature, top_k, top_p",
    [(1.0, None, None), (0.7, 3, None), (1.5, None, 0.7), (1.0, 4, 0.8)],
)
def test_sampling_distribution_matches_filtered_softmax(temperature, top_k, top_p):
    """Reference: NumPy softmax(logits / T) restricted to the top-k, then to the nucleus;
    20000 one-step samples must match it within 5 standard errors."""
    logits = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -1.0], np.float32)
    n = 20_000
    fn = lambda ids, cache: (jnp.broadcast_to(logits, (ids.shape[0], 6)), cache)  # noqa: E731
    out = decoding.sample(fn, {}, jnp.zeros((n,), jnp.int32), jax.random.key(0), max_len=1,
                          eos_id=EOS, temperature=temperature, top_k=top_k, top_p=top_p)
    freq = np.bincount(np.asarray(out[:, 0]), minlength=6) / n
    expected = _filtered_probs(logits, temperature, top_k, top_p)
    np.testing.assert_array_equal(freq == 0, expected == 0)
    np.testing.assert_allclose(freq, expected, atol=5 * np.sqrt(0.25 / n))


def test_logit_filters_match_numpy():
    """Reference: sorting in NumPy; top-p keeps the smallest prefix reaching mass p."""
    logits = np.log(np.array([[0.1, 0.4, 0.2, 0.3], [0.7, 0.1, 0.1, 0.1]], np.float32))
    top2 = np.asarray(decoding.top_k_logits(jnp.asarray(logits), 2))
    np.testing.assert_array_equal(np.isfinite(top2), [[0, 1, 0, 1], [1, 1, 1, 1]])  # ties kept
    nucleus = np.asarray(decoding.top_p_logits(jnp.asarray(logits), 0.65))
    np.testing.assert_array_equal(np.isfinite(nucleus), [[0, 1, 0, 1], [1, 0, 0, 0]])
    np.testing.assert_array_equal(nucleus[np.isfinite(nucleus)], logits[np.isfinite(nucleus)])


def test_gather_beams_matches_numpy():
    """Reference: NumPy fancy indexing of the [batch, beam, ...] view; scalars pass through."""
    x = np.arange(2 * 3 * 4).reshape(6, 4)
    idx = np.array([[2, 2, 0], [1, 0, 1]])
    out = decoding.gather_beams({"x": jnp.asarray(x), "i": jnp.int32(5)}, jnp.asarray(idx), 2, 3)
    expected = x.reshape(2, 3, 4)[np.arange(2)[:, None], idx].reshape(6, 4)
    np.testing.assert_array_equal(out["x"], expected)
    assert int(out["i"]) == 5
    np.testing.assert_array_equal(decoding.tile_beams(jnp.arange(2), 3), [0, 0, 0, 1, 1, 1])


def test_bad_arguments_raise():
    model = HistoryTable(vocab=4, max_len=3)
    fn = model.step_fn()
    with pytest.raises(ValueError, match="lead with 6 rows"):
        decoding.beam_search(fn, model.cache(3), STARTS[:2], beam_size=3, max_len=3, eos_id=EOS)
    with pytest.raises(ValueError, match="logits"):
        decoding.greedy_search(lambda ids, c: (jnp.zeros((3, 2, 4)), c), model.cache(3), STARTS,
                               max_len=3, eos_id=EOS)
    with pytest.raises(ValueError, match="cache"):
        decoding.greedy_search(lambda ids, c: (jnp.zeros((3, 4)), {}), model.cache(3), STARTS,
                               max_len=3, eos_id=EOS)
    with pytest.raises(ValueError, match="top_k"):
        decoding.sample(fn, model.cache(3), STARTS, jax.random.key(0), max_len=3, eos_id=EOS,
                        top_k=9)
    with pytest.raises(ValueError, match="top_p"):
        decoding.top_p_logits(jnp.zeros((2, 4)), 0.0)
    with pytest.raises(ValueError, match="alpha"):
        decoding.beam_search(fn, model.cache(3), STARTS, beam_size=1, max_len=3, eos_id=EOS,
                             alpha=-1.0)


# --------------------------------------------------------------------------------------------
# Over the Transformer models.
# --------------------------------------------------------------------------------------------

SRC = jnp.array([[3, 4, 5, 6, PAD, PAD], [7, 8, 9, 10, 11, 12]])
PROMPT = jnp.array([[2, 5, 7], [2, 9, 4]])
GEN_EOS = 2


def tiny(**overrides) -> TransformerConfig:
    kw = dict(
        vocab_size=13, emb_dim=16, num_heads=2, num_kv_heads=1, num_encoder_layers=1,
        num_decoder_layers=2, mlp_dim=32, max_len=16, dropout_rate=0.0,
        attention_dropout_rate=0.0, pad_id=PAD, bos_id=1,
    )
    return TransformerConfig(**{**kw, **overrides})


def random_params(model: nn.Module, *args, std: float = 0.3, seed: int = 0) -> dict:
    """N(0, std) parameters of the shapes `model.init` would make (no compile)."""
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), *args)["params"])
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, std, s.shape), s.dtype), shapes)


def _sequence_logprobs(logits, seqs, eos):
    """Sum of log p(seq[t]) up to and including the first EOS, and that length: NumPy."""
    logp = log_softmax(np.asarray(logits))
    seqs = np.asarray(seqs)
    ends = [list(s).index(eos) + 1 if eos in s else len(s) for s in seqs]
    picked = np.take_along_axis(logp, seqs[..., None], -1)[..., 0]
    return np.array([picked[i, :n].sum() for i, n in enumerate(ends)]), np.array(ends)


def test_encoder_decoder_greedy_and_beam_search_agree_with_full_forward():
    """Reference: full teacher-forced forward passes over the decoded sequences.
    Greedy (cached) tokens equal the arg-max of the full pass at every step up to EOS; the
    beam-search scores (`translate`, 3 beams, alpha 0.6) equal log p / lp(|Y|) recomputed by
    the full pass, which fails if the cache is not reordered with the beams."""
    model = EncoderDecoder(tiny())
    params = random_params(model, SRC, SRC)
    max_len, beam = 6, 3

    @jax.jit
    def run(params):
        fn, cache = decoding.encoder_decoder_step_fn(model, params, SRC, max_len=max_len)
        start = jnp.full((2,), model.config.bos_id)
        greedy = decoding.greedy_search(fn, cache, start, max_len=max_len, eos_id=GEN_EOS)
        seqs, scores = decoding.translate(model, params, SRC, max_len=max_len, eos_id=GEN_EOS,
                                          beam_size=beam, alpha=0.6)
        candidates = jnp.concatenate([greedy, seqs.reshape(-1, max_len)])
        sources = jnp.concatenate([SRC, jnp.repeat(SRC, beam, axis=0)])
        return greedy, seqs, scores, model.apply({"params": params}, sources, candidates)

    greedy, seqs, scores, logits = run(params)
    greedy_logits, beam_logits = logits[:2], logits[2:]
    _, ends = _sequence_logprobs(greedy_logits, greedy, GEN_EOS)
    argmax = np.argmax(np.asarray(greedy_logits), -1)
    for b in range(2):
        np.testing.assert_array_equal(argmax[b, : ends[b]], np.asarray(greedy)[b, : ends[b]])
    logp, ends = _sequence_logprobs(beam_logits, seqs.reshape(-1, max_len), GEN_EOS)
    expected = logp / ((5 + ends) / 6) ** 0.6
    np.testing.assert_allclose(np.asarray(scores).reshape(-1), expected, rtol=1e-4, atol=1e-5)
    assert np.all(np.diff(np.asarray(scores), axis=1) <= 0)


def test_decoder_only_generation_agrees_with_full_forward():
    """Reference: the full forward pass over prompt + generated tokens. `generate` with
    temperature 0 (prefilled prompt, cached steps) picks the arg-max at every position; beam
    search with one beam and an EOS the model never emits equals greedy, and its score equals
    the greedy sequence's log-probability from the full pass (lp(6) with alpha 0.6)."""
    model = DecoderOnlyLM(tiny(norm="pre", positions="learned", pad_id=None))
    params = random_params(model, PROMPT)
    max_len, never = 6, 13

    @jax.jit
    def run(params):
        greedy = decoding.generate(model, params, PROMPT, jax.random.key(0), max_len=max_len,
                                   eos_id=never, temperature=0.0)
        fn, cache, start = decoding.decoder_only_step_fn(model, params, PROMPT, max_len=max_len)
        seqs, scores = decoding.beam_search(fn, cache, start, beam_size=1, max_len=max_len,
                                            eos_id=never, alpha=0.6)
        full = model.apply({"params": params}, jnp.concatenate([PROMPT, greedy], axis=1))
        return greedy, seqs[:, 0], scores[:, 0], full

    greedy, beam_seq, beam_score, full = run(params)
    p = PROMPT.shape[1]
    gen_logits = np.asarray(full)[:, p - 1 : p - 1 + max_len]
    np.testing.assert_array_equal(np.argmax(gen_logits, -1), greedy)
    np.testing.assert_array_equal(beam_seq, greedy)
    logp, _ = _sequence_logprobs(gen_logits, greedy, never)
    np.testing.assert_allclose(beam_score, logp / ((5 + max_len) / 6) ** 0.6, rtol=1e-4)


def test_decoder_only_prompt_too_long_raises():
    model = DecoderOnlyLM(tiny(pad_id=None, max_len=8))
    params = random_params(model, PROMPT)
    with pytest.raises(ValueError, match="max_len"):
        decoding.decoder_only_step_fn(model, params, PROMPT, max_len=7)
