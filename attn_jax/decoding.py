"""Autoregressive decoding over a cached decoder: greedy, sampling and beam search.

Every decoder drives one step callback

    tokens_to_logits(ids [batch, 1] int32, cache) -> (logits [batch, vocab], new_cache)

inside a single `lax.while_loop` (no Python loop over steps), so a decoder traced under `jax.jit`
compiles once for all steps and stops early when every sequence has emitted EOS. The callback
closes over whatever it needs (params, encoder outputs); `cache` is a pytree whose array leaves
lead with the batch axis (scalar leaves such as a step counter are allowed), e.g. the 'cache'
collection of a model built with `decode=True`. The callbacks are built by the models
themselves (the contracts of `attn_jax.models.protocols`: `decode_step_fn` of an encoder-decoder,
`prompt_step_fn` of a decoder-only LM); this module never imports a model class.
`encoder_decoder_step_fn` and `decoder_only_step_fn` encode / prefill and tile the result for
beams; `translate`, `decode` and `generate` are one-call wrappers.

Typical use inside a jitted eval step:

    fn, cache = encoder_decoder_step_fn(model, params, inputs, max_len=64, num_repeats=4)
    start = jnp.full((inputs.shape[0],), model.config.bos_id)
    seqs, scores = beam_search(fn, cache, start, beam_size=4, max_len=64, eos_id=EOS)

The decoders are jitted with the callback as a static argument, so build it inside the jitted
function that decodes (as above, and as `translate` / `generate` do): there its params are
traced arguments. A new closure per eager call would retrace, and bake its params in as
constants.

Sequences never contain the start token: position t holds the token chosen at step t, EOS is
kept, and every position after it holds `pad_id`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from attn_jax.models.protocols import DecoderOnlyModel, EncoderDecoderModel

Array = jax.Array
PyTree = Any
TokensToLogits = Callable[[Array, PyTree], tuple[Array, PyTree]]


# --------------------------------------------------------------------------------------------
# Logit filters.
# --------------------------------------------------------------------------------------------


def top_k_logits(logits: Array, k: int) -> Array:
    """Keeps the `k` largest logits of each row and sets the rest to -inf: `[..., vocab]`.

    Ties with the k-th largest value are all kept (the set is defined by a threshold).
    """
    vocab = logits.shape[-1]
    if not 1 <= k <= vocab:
        raise ValueError(f"top_k must be in [1, vocab={vocab}], got top_k={k}")
    kth = lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits < kth, -jnp.inf, logits)


def top_p_logits(logits: Array, p: float) -> Array:
    """Nucleus filter (Holtzman et al. 2020, sec. 3.1): keeps the smallest set of most likely
    tokens whose probability sums to at least `p`, sets the rest to -inf: `[..., vocab]`.

    The most likely token is always kept, so every row stays a valid distribution.
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got top_p={p}")
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Mass strictly before each sorted token; a token is kept while that mass is below p.
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    kept = mass_before < p
    threshold = jnp.min(jnp.where(kept, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits < threshold, -jnp.inf, logits)


# --------------------------------------------------------------------------------------------
# Cache utilities.
# --------------------------------------------------------------------------------------------


def tile_beams(tree: PyTree, beam_size: int) -> PyTree:
    """Repeats every non-scalar leaf `[batch, ...]` -> `[batch * beam_size, ...]` (batch-major:
    row `b * beam_size + k` is beam k of example b). Scalar leaves are shared and kept."""
    return jax.tree.map(
        lambda x: x if jnp.ndim(x) == 0 else jnp.repeat(x, beam_size, axis=0), tree
    )


def _check_batched(cache: PyTree, rows: int, what: str) -> None:
    """Raises unless every non-scalar cache leaf leads with `rows`."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(cache):
        if jnp.ndim(leaf) and jnp.shape(leaf)[0] != rows:
            raise ValueError(
                f"{what}: cache leaf {jax.tree_util.keystr(path)} has shape {jnp.shape(leaf)}; "
                f"every non-scalar cache leaf must lead with {rows} rows"
            )


def gather_beams(tree: PyTree, beam_indices: Array, batch: int, beam_size: int) -> PyTree:
    """Reorders the beams of a flat `[batch * beam_size, ...]` pytree.

    Args:
      tree: leaves `[batch * beam_size, ...]` (scalar leaves pass through).
      beam_indices: `[batch, new_beams]` int, the source beam of each new beam.
    Returns:
      leaves `[batch * new_beams, ...]`, new beam j of example b copied from beam
      `beam_indices[b, j]` of example b.
    """

    def gather(x: Array) -> Array:
        if jnp.ndim(x) == 0:
            return x
        x = x.reshape((batch, beam_size) + x.shape[1:])
        idx = beam_indices.reshape(beam_indices.shape + (1,) * (x.ndim - 2))
        out = jnp.take_along_axis(x, idx, axis=1)
        return out.reshape((-1,) + x.shape[2:])

    return jax.tree.map(gather, tree)


def _call_step(
    tokens_to_logits: TokensToLogits, ids: Array, cache: PyTree, rows: int
) -> tuple[Array, PyTree]:
    """Calls the callback and checks its output shapes (at trace time)."""
    logits, new_cache = tokens_to_logits(ids, cache)
    if logits.ndim != 2 or logits.shape[0] != rows:
        raise ValueError(
            f"tokens_to_logits must return logits [batch={rows}, vocab], got shape "
            f"{logits.shape} for ids of shape {ids.shape}"
        )
    old = jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), cache)
    new = jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), new_cache)
    if old != new:
        raise ValueError(
            "tokens_to_logits must return a cache with the structure, shapes and dtypes of its "
            f"input cache; got {new} for {old}"
        )
    return logits.astype(jnp.float32), new_cache


def _check_common(start_tokens: Array, max_len: int) -> int:
    if start_tokens.ndim != 1:
        raise ValueError(f"start_tokens must be [batch], got shape {start_tokens.shape}")
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got max_len={max_len}")
    return start_tokens.shape[0]


# --------------------------------------------------------------------------------------------
# Greedy search and sampling.
# --------------------------------------------------------------------------------------------


def _decode_loop(
    tokens_to_logits: TokensToLogits,
    cache: PyTree,
    start_tokens: Array,
    choose: Callable[[Array, Array], Array],
    *,
    max_len: int,
    eos_id: int,
    pad_id: int,
) -> Array:
    """One token per row per step; a row that emitted EOS writes `pad_id` afterwards."""
    batch = _check_common(start_tokens, max_len)
    _check_batched(cache, batch, "decoding")

    def cond(state):
        step, _, _, _, done = state
        return (step < max_len) & ~jnp.all(done)

    def body(state):
        step, seqs, last, cache, done = state
        logits, cache = _call_step(tokens_to_logits, last[:, None], cache, batch)
        tokens = choose(logits, step).astype(jnp.int32)
        tokens = jnp.where(done, pad_id, tokens)
        seqs = lax.dynamic_update_slice(seqs, tokens[:, None], (0, step))
        return step + 1, seqs, tokens, cache, done | (tokens == eos_id)

    init = (
        jnp.zeros((), jnp.int32),
        jnp.full((batch, max_len), pad_id, jnp.int32),
        start_tokens.astype(jnp.int32),
        cache,
        jnp.zeros((batch,), bool),
    )
    return lax.while_loop(cond, body, init)[1]


@functools.partial(
    jax.jit, static_argnames=("tokens_to_logits", "max_len", "eos_id", "pad_id")
)
def greedy_search(
    tokens_to_logits: TokensToLogits,
    cache: PyTree,
    start_tokens: Array,
    *,
    max_len: int,
    eos_id: int,
    pad_id: int = 0,
) -> Array:
    """Greedy decoding: the arg-max token at every step.

    Args:
      tokens_to_logits: the step callback (see the module docstring).
      cache: initial cache, leaves `[batch, ...]`.
      start_tokens: `[batch]` int, the first input token (BOS, or the last prompt token).
      max_len: number of tokens to generate.
      eos_id: a row stops after emitting this token; pad_id fills the rest of the row.
    Returns:
      `[batch, max_len]` int32 tokens.
    """
    return _decode_loop(
        tokens_to_logits,
        cache,
        start_tokens,
        lambda logits, step: jnp.argmax(logits, axis=-1),
        max_len=max_len,
        eos_id=eos_id,
        pad_id=pad_id,
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "tokens_to_logits", "max_len", "eos_id", "pad_id", "temperature", "top_k", "top_p"
    ),
)
def sample(
    tokens_to_logits: TokensToLogits,
    cache: PyTree,
    start_tokens: Array,
    rng: Array,
    *,
    max_len: int,
    eos_id: int,
    pad_id: int = 0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> Array:
    """Ancestral sampling from softmax(logits / temperature), optionally restricted to the top-k
    tokens and then to the top-p nucleus (the order of HF transformers' warpers).

    temperature=0 is greedy. The key for step t is `fold_in(rng, t)`, so a seed fixes the output.

    Args:
      as `greedy_search`, plus rng (a PRNG key), temperature >= 0, top_k in [1, vocab] or None,
      top_p in (0, 1] or None.
    Returns:
      `[batch, max_len]` int32 tokens.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got temperature={temperature}")

    def choose(logits: Array, step: Array) -> Array:
        if temperature == 0:
            return jnp.argmax(logits, axis=-1)
        logits = logits / temperature
        if top_k is not None:
            logits = top_k_logits(logits, top_k)
        if top_p is not None:
            logits = top_p_logits(logits, top_p)
        return jax.random.categorical(jax.random.fold_in(rng, step), logits, axis=-1)

    return _decode_loop(
        tokens_to_logits, cache, start_tokens, choose, max_len=max_len, eos_id=eos_id,
        pad_id=pad_id,
    )


# --------------------------------------------------------------------------------------------
# Beam search.
# --------------------------------------------------------------------------------------------


def length_penalty(length: Array | int, alpha: float) -> Array:
    """GNMT length penalty lp(Y) = ((5 + |Y|) / 6) ** alpha (Wu et al. 2016, eq. 14)."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


@dataclasses.dataclass
class _BeamState:
    step: Array  # [] int32, number of tokens generated so far
    live_seqs: Array  # [batch, beam, max_len]
    live_logprobs: Array  # [batch, beam], sorted best first
    last: Array  # [batch, beam], input token of the next step
    fin_seqs: Array  # [batch, beam, max_len]
    fin_scores: Array  # [batch, beam], length-penalised, sorted best first; -inf if empty
    fin_flags: Array  # [batch, beam], whether the slot holds a finished hypothesis
    cache: PyTree  # leaves [batch * beam, ...]


jax.tree_util.register_dataclass(
    _BeamState,
    data_fields=[f.name for f in dataclasses.fields(_BeamState)],
    meta_fields=[],
)


@functools.partial(
    jax.jit,
    static_argnames=("tokens_to_logits", "beam_size", "max_len", "eos_id", "pad_id", "alpha"),
)
def beam_search(
    tokens_to_logits: TokensToLogits,
    cache: PyTree,
    start_tokens: Array,
    *,
    beam_size: int,
    max_len: int,
    eos_id: int,
    pad_id: int = 0,
    alpha: float = 0.6,
) -> tuple[Array, Array]:
    """Beam search with the GNMT length penalty (Wu et al. 2016, sec. 7).

    Each step extends every live beam by every token, keeps the 2*beam_size best candidates (so
    that beam_size of them are not EOS), moves the EOS ones to the finished pool with score
    log p(Y) / lp(|Y|) (|Y| counts the EOS), and keeps the beam_size best others live; the cache
    is reordered to follow the surviving beams. A finished hypothesis keeps its score. The loop
    stops at max_len, or once every example has beam_size finished hypotheses none of which any
    live beam can still beat (log-probabilities only fall, and lp grows with length for
    alpha >= 0, so a live beam's best reachable score is log p / lp(max_len)). Examples with no
    finished hypothesis return their live beams, scored log p / lp(max_len).

    Args:
      tokens_to_logits: the step callback; it sees `batch * beam_size` rows.
      cache: initial cache tiled over beams (`tile_beams`), leaves `[batch * beam_size, ...]`.
      start_tokens: `[batch]` int, the first input token of every beam.
      beam_size: number of beams; alpha: length-penalty exponent (>= 0; 0 = raw log p).
      max_len, eos_id, pad_id: as in `greedy_search`.
    Returns:
      sequences `[batch, beam_size, max_len]` int32 and scores `[batch, beam_size]` float32,
      best first.
    """
    batch = _check_common(start_tokens, max_len)
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got beam_size={beam_size}")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0 (the early stop relies on it), got alpha={alpha}")
    _check_batched(cache, batch * beam_size, f"beam_search(beam_size={beam_size})")
    neg_inf = jnp.float32(-jnp.inf)
    max_lp = length_penalty(max_len, alpha)

    def take(x: Array, idx: Array) -> Array:
        """x [batch, n, ...] gathered at idx [batch, m] along axis 1."""
        return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)

    def cond(s: _BeamState) -> Array:
        best_live = s.live_logprobs[:, 0] / max_lp
        worst_fin = jnp.min(jnp.where(s.fin_flags, s.fin_scores, neg_inf), axis=1)
        settled = jnp.all(s.fin_flags, axis=1) & (worst_fin >= best_live)
        return (s.step < max_len) & ~jnp.all(settled)

    def body(s: _BeamState) -> _BeamState:
        rows = batch * beam_size
        logits, cache = _call_step(tokens_to_logits, s.last.reshape(rows, 1), s.cache, rows)
        vocab = logits.shape[-1]
        logprobs = jax.nn.log_softmax(logits).reshape(batch, beam_size, vocab)
        candidates = (s.live_logprobs[:, :, None] + logprobs).reshape(batch, -1)
        num_cand = min(2 * beam_size, beam_size * vocab)
        cand_logprobs, cand_idx = lax.top_k(candidates, num_cand)  # [batch, num_cand]
        cand_beam, cand_token = cand_idx // vocab, cand_idx % vocab
        cand_seqs = take(s.live_seqs, cand_beam)
        cand_seqs = lax.dynamic_update_slice(
            cand_seqs, cand_token[:, :, None].astype(jnp.int32), (0, 0, s.step)
        )
        valid = jnp.isfinite(cand_logprobs)  # -inf: an extension of an empty beam slot
        is_eos = cand_token == eos_id

        # Live: the best candidates that did not end.
        live_logprobs, pick = lax.top_k(jnp.where(is_eos, neg_inf, cand_logprobs), beam_size)
        live_seqs = take(cand_seqs, pick)
        last = take(cand_token, pick)
        cache = gather_beams(cache, take(cand_beam, pick), batch, beam_size)

        # Finished: merge the candidates that ended with the pool, keep the best beam_size.
        ended = is_eos & valid
        new_scores = jnp.where(ended, cand_logprobs / length_penalty(s.step + 1, alpha), neg_inf)
        all_scores = jnp.concatenate([s.fin_scores, new_scores], axis=1)
        all_flags = jnp.concatenate([s.fin_flags, ended], axis=1)
        all_seqs = jnp.concatenate([s.fin_seqs, cand_seqs], axis=1)
        fin_scores, pick = lax.top_k(all_scores, beam_size)
        return _BeamState(
            step=s.step + 1,
            live_seqs=live_seqs,
            live_logprobs=live_logprobs,
            last=last,
            fin_seqs=take(all_seqs, pick),
            fin_scores=fin_scores,
            fin_flags=take(all_flags, pick),
            cache=cache,
        )

    # All beams start identical; only beam 0 is live so that the first step does not pick the
    # same continuation beam_size times.
    first_live = jnp.where(jnp.arange(beam_size) == 0, 0.0, neg_inf).astype(jnp.float32)
    init = _BeamState(
        step=jnp.zeros((), jnp.int32),
        live_seqs=jnp.full((batch, beam_size, max_len), pad_id, jnp.int32),
        live_logprobs=jnp.tile(first_live, (batch, 1)),
        last=jnp.repeat(start_tokens.astype(jnp.int32)[:, None], beam_size, axis=1),
        fin_seqs=jnp.full((batch, beam_size, max_len), pad_id, jnp.int32),
        fin_scores=jnp.full((batch, beam_size), neg_inf),
        fin_flags=jnp.zeros((batch, beam_size), bool),
        cache=cache,
    )
    s = lax.while_loop(cond, body, init)
    none_finished = ~jnp.any(s.fin_flags, axis=1)
    seqs = jnp.where(none_finished[:, None, None], s.live_seqs, s.fin_seqs)
    scores = jnp.where(none_finished[:, None], s.live_logprobs / max_lp, s.fin_scores)
    return seqs, scores


# --------------------------------------------------------------------------------------------
# Step callbacks of any model implementing the contracts of attn_jax.models.protocols.
# --------------------------------------------------------------------------------------------


def encoder_decoder_step_fn(
    model: EncoderDecoderModel,
    params: PyTree,
    source: Array,
    *,
    max_len: int,
    num_repeats: int = 1,
) -> tuple[TokensToLogits, PyTree]:
    """Encodes `source` once and returns the model's decoder step callback and initial cache.

    Args:
      model: any encoder-decoder of the contract (`encode` -> (memory, memory_mask),
        `decode_step_fn`): the Transformer, a recurrent seq2seq, an image captioner.
      params: its parameters (the 'params' collection).
      source: the encoder's input, `[batch, ...]` (token ids, images).
      max_len: decoder steps the cache must hold.
      num_repeats: copies of each example (beam_size for `beam_search`); memory and mask are
        tiled batch-major, so the callback sees `batch * num_repeats` rows.
    Returns:
      (tokens_to_logits, cache); start decoding from `model.bos_id`.
    """
    memory, memory_mask = model.apply({"params": params}, source, method="encode")
    memory, memory_mask = tile_beams((memory, memory_mask), num_repeats)
    return model.decode_step_fn(params, memory, memory_mask, max_len=max_len)


def decoder_only_step_fn(
    model: DecoderOnlyModel,
    params: PyTree,
    prompt: Array,
    *,
    max_len: int,
    num_repeats: int = 1,
) -> tuple[TokensToLogits, PyTree, Array]:
    """Prefills the model's cache with a prompt (`prompt_step_fn`) and returns the step
    callback, cache (`batch * num_repeats` rows) and start tokens `[batch]`.

    The prompt's first P-1 tokens go through the model in one call; its last token is the first
    decoder input, so the generated tokens continue the prompt. Greedy or sampled decoding of
    num_repeats > 1 copies takes `jnp.repeat(start_tokens, num_repeats)`.
    """
    fn, cache, start = model.prompt_step_fn(params, prompt, max_len=max_len)
    return fn, tile_beams(cache, num_repeats), start


@functools.partial(
    jax.jit, static_argnames=("model", "max_len", "beam_size", "eos_id", "alpha")
)
def translate(
    model: EncoderDecoderModel,
    params: PyTree,
    source: Array,
    *,
    max_len: int,
    eos_id: int,
    beam_size: int = 4,
    alpha: float = 0.6,
) -> tuple[Array, Array]:
    """Beam-search decoding of an encoder-decoder (the paper, sec. 6.1: beam 4, alpha 0.6).

    Returns sequences `[batch, beam_size, max_len]` and scores `[batch, beam_size]`, best first.
    """
    fn, cache = encoder_decoder_step_fn(
        model, params, source, max_len=max_len, num_repeats=beam_size
    )
    start = jnp.full((source.shape[0],), model.bos_id, jnp.int32)
    return beam_search(
        fn, cache, start, beam_size=beam_size, max_len=max_len, eos_id=eos_id,
        pad_id=model.pad_id, alpha=alpha,
    )


def decode(
    model: EncoderDecoderModel,
    params: PyTree,
    source: Array,
    *,
    max_len: int,
    eos_id: int,
    beam_size: int = 1,
    alpha: float = 0.6,
) -> Array:
    """The output tokens `[batch, max_len]` of an encoder-decoder: greedy when beam_size == 1,
    else the best beam of `beam_search`. Traceable; jit the caller (the callback is built here,
    inside it)."""
    if beam_size > 1:
        seqs, _ = translate(model, params, source, max_len=max_len, eos_id=eos_id,
                            beam_size=beam_size, alpha=alpha)
        return seqs[:, 0]
    fn, cache = encoder_decoder_step_fn(model, params, source, max_len=max_len)
    start = jnp.full((source.shape[0],), model.bos_id, jnp.int32)
    return greedy_search(fn, cache, start, max_len=max_len, eos_id=eos_id, pad_id=model.pad_id)


@functools.partial(
    jax.jit,
    static_argnames=("model", "max_len", "eos_id", "temperature", "top_k", "top_p"),
)
def generate(
    model: DecoderOnlyModel,
    params: PyTree,
    prompt: Array,
    rng: Array,
    *,
    max_len: int,
    eos_id: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> Array:
    """Continues `prompt` `[batch, P]` of a decoder-only model by `max_len` sampled tokens
    (temperature 0 = greedy). Returns the new tokens `[batch, max_len]`."""
    fn, cache, start = decoder_only_step_fn(model, params, prompt, max_len=max_len)
    return sample(
        fn, cache, start, rng, max_len=max_len, eos_id=eos_id, pad_id=model.pad_id,
        temperature=temperature, top_k=top_k, top_p=top_p,
    )
