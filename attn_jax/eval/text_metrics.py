"""Text metrics: exact match and corpus BLEU of decoded strings, bits per byte of an LM.

    dates_metrics(predictions, references)            # {'exact_match', 'bleu'}
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


def bleu(predictions: Sequence[str], references: Sequence[str], tokenize: str = "13a") -> float:
    """sacrebleu corpus BLEU (Papineni et al. 2002) in [0, 100], one reference per sentence."""
    import sacrebleu

    _check_corpus(predictions, references)
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)],
                                       tokenize=tokenize).score)


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
