"""Sequence-to-sequence with any encoder-decoder of the contract (`attn_jax.models.protocols`):
the Transformer (Vaswani et al. 2017), a recurrent seq2seq, an image captioner.

`config.data.dataset`:
  * 'dates' (offline): CLDR-written dates in ~30 locales -> ISO 8601 (`attn_jax.data.text`),
    generated from (train_size, validation_size, test_size, seed, locales, formats,
    start_year, end_year); held-out splits share no date with train.
  * 'gettext' (offline, real): English UI strings -> their translation into `target_lang` from the
    system's gettext catalogues (`attn_jax.data.datasets.gettext`: locale_dir, target_lang,
    max_bytes, validation_fraction, test_fraction, domains; seed salts the hash split).
  * 'wmt14_de_en' (online): tfds `wmt14_translate/de-en` prepared as ArrayRecord in data_dir;
    source_lang / target_lang pick the direction (default en -> de, the paper's headline).
  * 'digits_words' (offline, an image source): the scikit-learn digits (8x8 grey, [0, 1]) ->
    the English word of the digit ('seven'); the source side is images, so the model's encoder
    must take `[batch, 8, 8, 1]` (a captioning-shaped model).
  * 'scenes' / 'scenes_digits' (offline, image sources): canvases of 1..max_items Fashion-MNIST
    items (64x64 by default; IDX files in source_dir) or scikit-learn digits (32x32) -> a
    caption from a small grammar over classes, counts and spatial relations
    (`attn_jax.data.datasets.scenes`: train_size / validation_size / test_size scenes from
    seed, canvas_size, min_items, max_items). Train pairs cycle through
    references_per_scene references of each scene. Eval splits pair each scene with its
    canonical caption (the loss), and the decode evaluator scores against all its captions
    (`reference_sets`) and reports whether the caption names the right classes
    (`decode_metrics`: class_set_match, class_count_match).

Training minimises label-smoothed cross entropy (Szegedy et al. 2016; eps = config.label_smoothing)
over target tokens. The default evaluators report per-token loss and accuracy ('loss') and decode
the eval splits ('decode': greedy, or beam search with the GNMT length penalty, the paper's
sec. 6.1) for exact match and sacrebleu BLEU (against every reference of an example when the
dataset has several); `config.evals` sets others.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from attn_jax import decoding
from attn_jax.data import text
from attn_jax.data.datasets import gettext
from attn_jax.data.datasets import scenes
from attn_jax.data.datasets.digits import digits_words
from attn_jax.data.seq2seq import image_text_dataset
from attn_jax.data.tokenizers import BOS_ID, EOS_ID, PAD_ID
from attn_jax.eval.evaluators import predict_texts
from attn_jax.models.protocols import EncoderDecoderModel, check_implements
from attn_jax.losses import cross_entropy_with_label_smoothing
from attn_jax.tasks.sequence import SequenceTask, TokenizerConfig

DATASETS = ("dates", "gettext", "wmt14_de_en", "digits_words", "scenes", "scenes_digits")
IMAGE_DATASETS = ("digits_words", "scenes", "scenes_digits")
SCENE_SOURCES = {"scenes": "fashion_mnist", "scenes_digits": "digits"}


@dataclasses.dataclass(frozen=True)
class DataConfig(TokenizerConfig):
    """config.data of the seq2seq task (with the tokenizer keys)."""

    dataset: str = "dates"
    max_src_len: int = 64                # source tokens incl. eos (text sources)
    max_tgt_len: int = 64                # target tokens incl. eos
    eval_splits: tuple[str, ...] = ("validation",)
    # dates
    train_size: int = 100_000            # (also the number of scenes per split)
    validation_size: int = 1000
    test_size: int = 1000
    seed: int = 0
    locales: tuple[str, ...] = ()        # () = all of text.DATE_LOCALES
    formats: tuple[str, ...] = ()        # () = all of the CLDR formats
    start_year: int = 0                  # 0 = the generator's default range
    end_year: int = 0
    # gettext (seed above salts its split; target_lang below picks <locale_dir>/<lang>/LC_MESSAGES)
    locale_dir: str = ""                 # "" = /usr/share/locale
    max_bytes: int = 64                  # longest string kept, either side, in UTF-8 bytes
    validation_fraction: float = 0.05
    test_fraction: float = 0.05
    domains: tuple[str, ...] = ()        # () = every catalogue, else e.g. ("coreutils", "git")
    # wmt14 (source_lang, target_lang) and gettext (target_lang; its source is always English)
    data_dir: str = ""
    source_lang: str = "en"
    target_lang: str = "de"
    train_split: str = "train"
    spm_train_pairs: int = 1_000_000     # pairs read to train SentencePiece
    # scenes / scenes_digits (and the *_size and seed keys above)
    canvas_size: int = 0                 # 0 = the source's default (64 Fashion-MNIST, 32 digits)
    min_items: int = 1
    max_items: int = 4
    references_per_scene: int = 1        # training captions per scene (1 = the canonical one)
    source_dir: str = ""                 # Fashion-MNIST IDX files; "" = the default place


class Seq2SeqTask(SequenceTask):
    """Batches {'inputs' [b, max_src_len] ids or [b, h, w, c] images, 'targets' [b, max_tgt_len],
    'mask' [b]}, pad 0."""

    DataConfig = DataConfig
    EVALUATOR_TYPES = frozenset({"loss", "decode"})

    def __init__(self, config):
        super().__init__(config)
        cfg = self.data_cfg
        if cfg.dataset not in DATASETS:
            raise ValueError(f"config.data.dataset={cfg.dataset!r}: choose one of {DATASETS}")
        self.dataset = cfg.dataset
        check_implements(self.model, EncoderDecoderModel, f"config.model.name="
                         f"{config.model.get('name')!r}")
        self.max_src_len, self.max_tgt_len = int(cfg.max_src_len), int(cfg.max_tgt_len)
        self._pairs: dict[str, Sequence[tuple[Any, str]]] = {}

    def _model_defaults(self) -> dict[str, Any]:
        # One tokenizer for both sides; its pad is masked and its bos starts the decoder.
        return {"pad_id": PAD_ID, "bos_id": BOS_ID}

    def validate(self) -> None:
        super().validate()
        if min(self.max_src_len, self.max_tgt_len) < 2:
            raise ValueError(f"max_src_len={self.max_src_len}, max_tgt_len={self.max_tgt_len} "
                             "must be >= 2 (text + eos)")
        longest = self.max_tgt_len if self.image_source else max(self.max_src_len,
                                                                 self.max_tgt_len)
        if self.max_len is not None and longest > self.max_len:
            raise ValueError(f"model max_len={self.max_len} is shorter than the longest sequence "
                             f"{longest} (config.data.max_src_len / max_tgt_len)")
        self.check_splits(self.eval_splits(), "config.data.eval_splits")
        if self.dataset == "gettext":
            self._validate_gettext()
        if self.dataset in SCENE_SOURCES:
            self._validate_scenes()

    def _validate_scenes(self) -> None:
        """The scene options (`scenes.Scenes` refuses an empty or too small canvas) and, for
        bytes, a target length that holds the grammar's longest caption and its eos."""
        cfg = self.data_cfg
        if not 1 <= cfg.references_per_scene <= scenes.MAX_REFERENCES:
            raise ValueError(f"config.data.references_per_scene={cfg.references_per_scene} must "
                             f"lie in [1, {scenes.MAX_REFERENCES}]")
        longest = self._scenes("train").max_caption_bytes
        if self.tokenizer_kind == "byte" and longest > self.max_tgt_len - 1:
            raise ValueError(f"config.data.max_tgt_len={self.max_tgt_len} cannot hold the longest "
                             f"caption of max_items={cfg.max_items} ({longest} bytes) and its eos: "
                             f"set max_tgt_len >= {longest + 1}")

    def _validate_gettext(self) -> None:
        """Cheap checks (no catalogue is read): the language's catalogues exist, the fractions
        leave a training split, and byte-tokenised strings fit with their eos."""
        cfg = self.data_cfg
        gettext.check_fractions(cfg.validation_fraction, cfg.test_fraction)
        if cfg.source_lang != "en":
            raise ValueError(f"config.data.source_lang={cfg.source_lang!r}: the gettext catalogues "
                             "translate from English; set source_lang='en' and target_lang")
        gettext.catalogue_paths(cfg.target_lang, cfg.locale_dir or gettext.DEFAULT_LOCALE_DIR,
                                cfg.domains)
        room = min(self.max_src_len, self.max_tgt_len) - 1
        if self.tokenizer_kind == "byte" and cfg.max_bytes > room:
            raise ValueError(f"config.data.max_bytes={cfg.max_bytes} does not fit "
                             f"max_src_len={self.max_src_len} / max_tgt_len={self.max_tgt_len} "
                             f"with the eos: set max_bytes <= {room} or raise the lengths")

    # -- checks the evaluators call -------------------------------------------------------------
    def check_decode_len(self, max_len: int, where: str) -> int:
        """The decode length (0 = max_tgt_len), checked against the model."""
        max_len = max_len or self.max_tgt_len
        if max_len < 2 or (self.max_len is not None and max_len > self.max_len):
            raise ValueError(f"{where}={max_len} must be in [2, model max_len={self.max_len}]")
        return max_len

    # -- data -----------------------------------------------------------------------------------
    @property
    def image_source(self) -> bool:
        return self.dataset in IMAGE_DATASETS

    def _scenes(self, split: str) -> scenes.Scenes:
        cfg = self.data_cfg
        return scenes.Scenes(
            split, source=SCENE_SOURCES[self.dataset],
            num_examples=int(getattr(cfg, f"{split}_size")),
            canvas_size=int(cfg.canvas_size) or None, min_items=int(cfg.min_items),
            max_items=int(cfg.max_items), seed=int(cfg.seed), source_dir=cfg.source_dir or None)

    def pairs(self, split: str) -> Sequence[tuple[Any, str]]:
        """(source, target) of `split` (source: a string, or an image [h, w, 1] for the image
        sources), built or opened once (scenes: generated on access)."""
        if split not in self._pairs:
            cfg = self.data_cfg
            if self.dataset == "dates":
                kw = {k: tuple(getattr(cfg, k)) for k in ("locales", "formats") if getattr(cfg, k)}
                kw |= {k: int(getattr(cfg, k)) for k in ("start_year", "end_year")
                       if getattr(cfg, k)}
                self._pairs.update(text.date_splits(
                    int(cfg.train_size), int(cfg.validation_size), int(cfg.test_size),
                    int(cfg.seed), **kw))
            elif self.dataset == "gettext":
                self._pairs.update(gettext.load_gettext(
                    cfg.target_lang, cfg.locale_dir or gettext.DEFAULT_LOCALE_DIR,
                    max_bytes=int(cfg.max_bytes), validation_fraction=cfg.validation_fraction,
                    test_fraction=cfg.test_fraction, seed=int(cfg.seed),
                    domains=tuple(cfg.domains)).splits)
            elif self.dataset == "digits_words":
                self._pairs.update(digits_words(int(cfg.seed)))
            elif self.dataset in SCENE_SOURCES:
                self._pairs[split] = scenes.CaptionPairs(
                    self._scenes(split), int(cfg.references_per_scene) if split == "train" else 1)
            else:
                name = cfg.train_split if split == "train" else split
                self._pairs[split] = text.load_wmt14(
                    name, cfg.data_dir or None, source_lang=cfg.source_lang,
                    target_lang=cfg.target_lang)
        return self._pairs[split]

    def train_size(self) -> int:
        return len(self.pairs("train"))

    def eval_splits(self) -> tuple[str, ...]:
        return tuple(self.data_cfg.eval_splits)

    def _spm_texts(self) -> Iterator[str]:
        pairs = self.pairs("train")
        stride = max(1, len(pairs) // int(self.data_cfg.spm_train_pairs))  # spread, not the head
        for i in range(0, len(pairs), stride):
            source, target = pairs[i]
            if not self.image_source:
                yield source
            yield target

    def _dataset(self, pairs, train: bool, seed: int, process_index: int, process_count: int):
        batch = int(self.config.batch_size)
        if self.image_source:
            return image_text_dataset(pairs, self.tokenizer, global_batch_size=batch,
                                      max_tgt_len=self.max_tgt_len, seed=seed, train=train,
                                      process_index=process_index, process_count=process_count)
        return text.seq2seq_dataset(
            pairs, self.tokenizer, self.tokenizer, global_batch_size=batch,
            max_src_len=self.max_src_len, max_tgt_len=self.max_tgt_len, seed=seed, train=train,
            process_index=process_index, process_count=process_count)

    def train_iterator(self, *, seed, process_index, process_count):
        return text.batch_iterator(self._dataset(self.pairs("train"), True, seed, process_index,
                                                 process_count))

    def eval_iterator(self, split, *, process_index, process_count):
        return text.batch_iterator(self._dataset(self.pairs(split), False, 0, process_index,
                                                 process_count))

    # -- model ----------------------------------------------------------------------------------
    def _source_shape(self) -> tuple[int, ...]:
        return np.shape(self.pairs("train")[0][0]) if self.image_source else (self.max_src_len,)

    def _init_fresh(self, rng):
        dtype = jnp.float32 if self.image_source else jnp.int32
        inputs = jnp.ones((1, *self._source_shape()), dtype)
        targets = jnp.ones((1, self.max_tgt_len), jnp.int32)
        return self.model.init({"params": rng}, inputs, targets)["params"]

    def _token_stats(self, logits, batch):
        weights = (batch["targets"] != PAD_ID) & (batch["mask"][:, None] > 0)
        correct = (logits.argmax(-1) == batch["targets"]) & weights
        return weights.astype(jnp.float32), correct.astype(jnp.float32).sum()

    def loss(self, params, batch, rng, step):
        """Label-smoothed cross entropy, plus whatever the model sows into its 'losses'
        collection in training (a captioner's attention regulariser), each reported too."""
        logits, sown = self.model.apply({"params": params}, batch["inputs"], batch["targets"],
                                        deterministic=False, rngs={"dropout": rng},
                                        mutable=["losses"])
        weights, correct = self._token_stats(logits, batch)
        loss, tokens = cross_entropy_with_label_smoothing(
            logits, batch["targets"], weights, float(self.config.get("label_smoothing", 0.0)))
        metrics = {"token_accuracy": correct / jnp.maximum(tokens, 1.0)}
        for name, values in traverse_util.flatten_dict(dict(sown.get("losses", {})),
                                                       sep="_").items():
            metrics[f"aux_{name}"] = sum(jax.tree.leaves(values))  # sow keeps a tuple
            loss = loss + metrics[f"aux_{name}"]
        return loss, metrics

    def eval_sums(self, params, batch):
        """Sums over real target tokens: 'loss' (NLL, no smoothing) and 'token_accuracy';
        'count' is the number of tokens, so the evaluator reports per-token means."""
        logits = self.model.apply({"params": params}, batch["inputs"], batch["targets"])
        weights, correct = self._token_stats(logits, batch)
        nll = cross_entropy_with_label_smoothing(logits, batch["targets"], weights)[0]
        tokens = weights.sum()
        return {"loss": nll * tokens, "token_accuracy": correct, "count": tokens}

    # -- decoding (fed to the decode evaluator) -------------------------------------------------
    def default_evals(self) -> dict[str, dict[str, Any]]:
        return {"loss": {"type": "loss"}, "decode": {"type": "decode"}}

    def predict_tokens_fn(self, max_len: int, beam_size: int = 1, alpha: float = 0.6):
        """(params, inputs) -> output tokens `[batch, max_len]` (eos kept, pad after it)."""
        return functools.partial(decoding.decode, self.model, max_len=max_len, eos_id=EOS_ID,
                                 beam_size=beam_size, alpha=alpha)

    def decode_pairs(self, split: str, max_examples: int = 0) -> Sequence[tuple[Any, str]]:
        """The first `max_examples` (0 = all) (source, target string) pairs of `split`: what the
        decode evaluator decodes and scores."""
        source = self.pairs(split)
        n = min(max_examples, len(source)) if max_examples else len(source)
        return [source[i] for i in range(n)]

    def decode_references(self, split: str, max_examples: int = 0
                          ) -> tuple[list[str], list[str]]:
        """(printable sources, reference strings) of the first `max_examples` (0 = all)."""
        pairs = self.decode_pairs(split, max_examples)
        sources = [f"<image {i}>" if self.image_source else s for i, (s, _) in enumerate(pairs)]
        return sources, [t for _, t in pairs]

    def reference_sets(self, split: str, max_examples: int = 0) -> list[list[str]]:
        """Every reference of the first `max_examples` (0 = all) examples of `split`, [0] the
        one `decode_references` gives: all the captions of a scene, else the one target."""
        if self.dataset in SCENE_SOURCES:
            pairs = self.pairs(split)
            n = min(max_examples, len(pairs)) if max_examples else len(pairs)
            return [list(self._scene_of_pair(split, i).captions) for i in range(n)]
        return [[t] for _, t in self.decode_pairs(split, max_examples)]

    def _scene_of_pair(self, split: str, i: int) -> scenes.Scene:
        pairs = self.pairs(split)  # a CaptionPairs: pair i is scene i // references_per_scene
        return pairs.scenes[i // pairs.references_per_scene]

    def decode_metrics(self, split: str, predictions: Sequence[str]) -> dict[str, float]:
        """Dataset-specific metrics of the decoded first len(predictions) examples of `split`
        (the decode evaluator's hook): for scenes, whether the caption names the scene's
        classes (`scenes.caption_metrics`); {} for text datasets."""
        if self.dataset not in SCENE_SOURCES:
            return {}
        return scenes.caption_metrics(
            predictions, [self._scene_of_pair(split, i) for i in range(len(predictions))],
            SCENE_SOURCES[self.dataset])

    def decode_batches(self, split: str, max_examples: int = 0, *, process_index: int = 0,
                       process_count: int = 1):
        """One pass of host batches over the first `max_examples` examples of `split`."""
        return self._dataset(self.decode_pairs(split, max_examples), False, 0, process_index,
                             process_count)

    def translate(self, params: Any, sources: Sequence[Any], mesh=None, *, beam_size: int = 1,
                  alpha: float = 0.6, max_len: int = 0) -> list[str]:
        """Decoded target strings for `sources` (every process passes the same list)."""

        pairs = [(s, "") for s in sources]
        predict = jax.jit(self.predict_tokens_fn(max_len or self.max_tgt_len, beam_size, alpha))
        batches = self._dataset(pairs, False, 0, jax.process_index(), jax.process_count())
        return predict_texts(self, params, batches, predict, len(pairs), mesh)
