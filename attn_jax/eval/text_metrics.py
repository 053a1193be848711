"""Text metrics: exact match and corpus BLEU of decoded strings, bits per byte of an LM.

    dates_metrics(predictions, references)            # {'exact_match', 'bleu'}
    bleu(predictions, [["a cat", "there is a cat"], ["two dogs"]])   # several references each
    exact_match_any(predictions, reference_sets)      # equal to any of its references
    lm_metrics(total_nll_nats, num_tokens, num_bytes)  # {'loss', 'perplexity', 'bits_per_byte'}
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference after stripping outer whitespace."""
    _check_corpus(predictions, references)
    return float(np.mean([p.strip() == r.strip() for p, r in zip(predictions, references)]))


def exact_match_any(predictions: Sequence[str], reference_sets: Sequence[Sequence[str]]
                    ) -> float:
    """Fraction of predictions equal to any of their references (outer whitespace stripped)."""
    _check_corpus(predictions, reference_sets)
    return float(np.mean([p.strip() in {r.strip() for r in refs}
                          for p, refs in zip(predictions, reference_sets)]))


def reference_streams(reference_sets: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """Per-sentence reference lists -> sacrebleu's reference streams: stream j holds every
    sentence's j-th reference, None where a sentence has fewer (sacrebleu drops None, so a
    sentence is scored against just its own references)."""
    if any(isinstance(refs, str) or not len(refs) for refs in reference_sets):
        raise ValueError("every sentence needs a non-empty list of reference strings; got "
                         f"{[r if isinstance(r, str) else len(r) for r in reference_sets][:5]}")
    width = max(len(refs) for refs in reference_sets)
    return [[refs[j] if j < len(refs) else None for refs in reference_sets]
            for j in range(width)]


def bleu(predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]],
         tokenize: str = "13a") -> float:
    """sacrebleu corpus BLEU (Papineni et al. 2002) in [0, 100]. `references[i]` is sentence
    i's reference string, or its list of references (any number >= 1: n-grams are clipped by
    their largest count in any reference and the brevity penalty uses the closest reference
    length, sacrebleu's multi-reference BLEU)."""
    import sacrebleu

    _check_corpus(predictions, references)
    if all(isinstance(r, str) for r in references):
        streams = [list(references)]
    else:
        streams = reference_streams([[r] if isinstance(r, str) else list(r)
                                     for r in references])
    return float(sacrebleu.corpus_bleu(list(predictions), streams, tokenize=tokenize).score)


def dates_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """{'exact_match': fraction in [0, 1], 'bleu': sacrebleu corpus BLEU in [0, 100]}."""
    return {"exact_match": exact_match(predictions, references),
            "bleu": bleu(predictions, references)}


def _check_corpus(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references) or not references:
        raise ValueError(f"need as many predictions as references, at least one: got "
                         f"{len(predictions)} predictions, {len(references)} references")


def bits_per_byte(total_nll_nats: float, num_bytes: int) -> float:
    """Summed next-token NLL (nats) over a text -> bits per UTF-8 byte: nll / (ln 2 * bytes)."""
    if num_bytes <= 0:
        raise ValueError(f"num_bytes must be > 0, got {num_bytes}")
    return float(total_nll_nats) / (math.log(2.0) * num_bytes)


def lm_metrics(total_nll_nats: float, num_tokens: int, num_bytes: int) -> dict[str, float]:
    """{'loss': nats/token, 'perplexity': exp(loss), 'bits_per_byte'} from summed NLL."""
    if num_tokens <= 0:
        raise ValueError(f"num_tokens must be > 0, got {num_tokens}")
    loss = float(total_nll_nats) / num_tokens
    return {"loss": loss, "perplexity": math.exp(loss),
            "bits_per_byte": bits_per_byte(total_nll_nats, num_bytes)}
