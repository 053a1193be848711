"""Language-modelling text: the Python standard library's own source, split by file.

    corpus = stdlib_corpus()          # {'train', 'validation'}: TextSplit(names, texts)
    stream = lm_windows.token_stream(corpus['train'].texts, tokenizer)

Offline: the files ship with Python (so the sizes depend on its version). Token streams,
windows and batches are in `attn_jax.data.lm_windows`, bits per byte in
`attn_jax.eval.text_metrics`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sysconfig

# Tests, installed packages, caches, and pydoc_data (generated: one 750 KB string of docs that
# would be half of any split it fell into).
STDLIB_EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages",
                                  "__pycache__", "pydoc_data"})


@dataclasses.dataclass(frozen=True)
class TextSplit:
    """Documents of one split: `names[i]` is the file `texts[i]` was read from."""

    names: tuple[str, ...]
    texts: tuple[str, ...]

    @property
    def num_bytes(self) -> int:
        """UTF-8 bytes of all texts."""
        return sum(len(t.encode("utf-8")) for t in self.texts)


def in_validation(name: str, seed: int, fraction: float) -> bool:
    """Whether file `name` goes to validation: SHA-256 of "seed/name" as a uniform in [0, 1)."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


def stdlib_corpus(validation_fraction: float = 0.05, seed: int = 0,
                  root: str | None = None) -> dict[str, TextSplit]:
    """{'train', 'validation'}: the `*.py` files under the stdlib (or `root`), split by file.

    Test directories, site-packages and caches are skipped (`STDLIB_EXCLUDED_DIRS`). Names are
    POSIX paths relative to `root`, sorted; `in_validation` assigns each file, so a file's split
    does not depend on which other files exist. The text (and so every size) depends on the
    Python version: CPython 3.11.7 gives 694 train files (10,746,991 bytes) and 38 validation
    files (614,639 bytes) with the defaults.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    root = root or sysconfig.get_paths()["stdlib"]
    names = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in STDLIB_EXCLUDED_DIRS]
        rel = os.path.relpath(dirpath, root)
        names += [f if rel == "." else f"{rel}/{f}".replace(os.sep, "/")
                  for f in filenames if f.endswith(".py")]
    names.sort()
    splits: dict[str, tuple[list[str], list[str]]] = {"train": ([], []), "validation": ([], [])}
    for name in names:
        with open(os.path.join(root, name), "rb") as f:
            text = f.read().decode("utf-8")  # PEP 3120: stdlib sources are UTF-8
        split = "validation" if in_validation(name, seed, validation_fraction) else "train"
        splits[split][0].append(name)
        splits[split][1].append(text)
    for split, (split_names, _) in splits.items():
        if not split_names:
            raise ValueError(f"stdlib_corpus: {split} split is empty ({len(names)} files under "
                             f"{root!r}, validation_fraction={validation_fraction})")
    return {k: TextSplit(tuple(n), tuple(t)) for k, (n, t) in splits.items()}
