"""Evaluators: each a small class named in the config, with its own cadence, fed by the task.

    config.evals.loss = dict(type="loss", every_steps=500)            # eval_sums over splits
    config.evals.decode = dict(type="decode", every_steps=1500, beam_size=4, splits=("test",))
    config.evals.fid = dict(type="fid", every_steps=5000, classifier_workdir="runs/vit")
    config.evals.map = dict(type="coco_map", every_steps=2000, max_images=500)  # detection

`every_steps` 0 means the run's `eval_every_steps` (0 there: only at the end); every evaluator
also runs at the last step. The trainer's one eval loop (`run_due`) calls the evaluators that are
due and writes their metrics as one 'eval' row per step. The task supplies data and prediction
functions (`eval_iterator`, `eval_sums`, `decode_batches` + `predict_tokens`, `sample`,
`generate`, `bpd_terms`, `coco_gt` + `detection_batches` + `predict_fn`) and the references and
metrics of its data (`decode_references`, `reference_sets`, `decode_metrics`); the loops over eval
data live here, not in the tasks.

With EMA parameters in the state, evaluators with `ema=True` also report `ema_`-prefixed
metrics (or, for pictures and samples, use the EMA parameters).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from attn_jax import progress
from attn_jax.eval import text_metrics
from attn_jax.train import sharding as shd
from attn_jax.train.config import parse_section

log = logging.getLogger(__name__)


@dataclasses.dataclass
class EvalContext:
    """What an evaluator gets at a step: the parameters and where to write."""

    params: Any
    ema_params: Any | None
    step: int
    workdir: str
    writer: Any
    mesh: jax.sharding.Mesh
    param_shardings: Any = None

    @property
    def primary(self) -> bool:
        return jax.process_index() == 0

    def variants(self, ema: bool) -> list[tuple[str, Any]]:
        """('', params) and, when asked and kept, ('ema_', ema_params)."""
        out = [("", self.params)]
        if ema and self.ema_params is not None:
            out.append(("ema_", self.ema_params))
        return out


class Evaluator:
    """Base: `Config` declares the keys (every one with a default); `run` returns metrics.

    Every evaluator's Config extends this one: `every_steps` (0 = the task's eval_every_steps)
    and `ema` (use the EMA parameters when the run keeps them: metric evaluators report both
    sets, the EMA one `ema_`-prefixed; evaluators that draw samples draw from the EMA set)."""

    @dataclasses.dataclass(frozen=True)
    class Config:
        every_steps: int = 0
        ema: bool = True

    def __init__(self, name: str, cfg: Any, task: Any, default_every: int):
        self.name, self.cfg, self.task = name, cfg, task
        self.every = int(cfg.every_steps) or int(default_every)
        if int(cfg.every_steps) < 0:
            raise ValueError(f"config.evals.{name}.every_steps={cfg.every_steps} must be >= 0")

    def due(self, step: int, total_steps: int) -> bool:
        return step == total_steps or (self.every > 0 and step % self.every == 0)

    def run(self, ctx: EvalContext) -> dict[str, float]:
        raise NotImplementedError


# ------------------------------------------------------------------------------------ loss
class LossEvaluator(Evaluator):
    """Means of the task's `eval_sums` over each split ('<split>_<metric>'), then the task's
    `eval_metrics` (e.g. perplexity)."""

    @dataclasses.dataclass(frozen=True)
    class Config(Evaluator.Config):
        splits: tuple[str, ...] = ()    # default: the task's eval_splits()

    def __init__(self, name, cfg, task, default_every):
        super().__init__(name, cfg, task, default_every)
        self.splits = tuple(cfg.splits) or tuple(task.eval_splits())
        task.check_splits(self.splits, f"config.evals.{name}.splits")
        self._jit: dict[Any, Callable] = {}

    def _fn(self, ctx: EvalContext) -> Callable:
        key = id(ctx.mesh)
        if key not in self._jit:
            self._jit[key] = jax.jit(self.task.eval_sums, in_shardings=(ctx.param_shardings, None))
        return self._jit[key]

    def evaluate(self, ctx: EvalContext, params: Any, prefix: str = "") -> dict[str, float]:
        fn, results = self._fn(ctx), {}
        for split in self.splits:
            sums: dict[str, float] = {}
            batches = self.task.eval_iterator(split, process_index=jax.process_index(),
                                              process_count=jax.process_count())
            ema = " (EMA)" if prefix else ""
            for host_batch in progress.track(batches, f"eval {split} loss{ema}"):
                out = jax.device_get(fn(params, shd.global_batch(ctx.mesh, host_batch)))
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
            count = max(sums.pop("count", 0.0), 1.0)
            means = self.task.eval_metrics(split, {k: v / count for k, v in sums.items()})
            results.update({f"{split}_{k}": v for k, v in means.items()})
        return results

    def run(self, ctx):
        out = {}
        for prefix, params in ctx.variants(self.cfg.ema):
            out |= {prefix + k: v for k, v in self.evaluate(ctx, params, prefix).items()}
        return out


# ------------------------------------------------------------------------------------ decode
def _examples_table(sources: Sequence[str], references: Sequence[str],
                    predictions: Sequence[str]) -> str:
    """A markdown table (TensorBoard renders it): source | reference | prediction."""
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| source | reference | prediction |", "| --- | --- | --- |"]
    lines += [f"| {cell(s)} | {cell(t)} | {cell(p)} |"
              for s, t, p in zip(sources, references, predictions)]
    return "\n".join(lines)


def predict_texts(task: Any, params: Any, batches: Any, predict: Callable, num: int,
                  mesh: jax.sharding.Mesh | None = None, desc: str = "decoding") -> list[str]:
    """Decoded strings of the first `num` examples of `batches` (host batches with 'inputs'):
    each batch's inputs become a global array, `predict(params, inputs)` gives tokens, all
    processes gather them, and the task detokenizes."""
    if mesh is None:
        mesh = shd.make_mesh({"data": 1}, jax.devices()[:1])
    rows = []
    for batch in progress.track(batches, f"{desc} ({num} examples)"):
        inputs = shd.global_batch(mesh, {"inputs": batch["inputs"]})["inputs"]
        rows.append(np.asarray(multihost_utils.process_allgather(predict(params, inputs),
                                                                 tiled=True)))
    tokens = np.concatenate(rows)[:num]  # filler rows come last
    return task.detokenize(tokens)


class DecodeEvaluator(Evaluator):
    """Greedy or beam-search decoding of an encoder-decoder (`attn_jax.decoding.decode`) on
    `splits`: '<split>_exact_match' (against the main reference, `task.decode_references`),
    '<split>_bleu' (sacrebleu corpus BLEU against every reference, `task.reference_sets`), when
    some example has several references '<split>_exact_match_any' (equal to any of them), the
    task's own '<split>_<name>' (`task.decode_metrics`), and a table of example outputs written
    to TensorBoard and printed."""

    @dataclasses.dataclass(frozen=True)
    class Config(Evaluator.Config):
        splits: tuple[str, ...] = ()    # default: the task's eval_splits()
        max_examples: int = 0           # 0 = the whole split
        beam_size: int = 1              # 1 = greedy
        length_penalty: float = 0.6     # GNMT alpha (Wu et al. 2016, eq. 14)
        max_decode_len: int = 0         # 0 = the task's target length
        num_examples_shown: int = 5

    def __init__(self, name, cfg, task, default_every):
        super().__init__(name, cfg, task, default_every)
        self.splits = tuple(cfg.splits) or tuple(task.eval_splits())
        task.check_splits(self.splits, f"config.evals.{name}.splits")
        if cfg.beam_size < 1 or cfg.max_examples < 0 or cfg.length_penalty < 0:
            raise ValueError(f"config.evals.{name}: beam_size >= 1, max_examples >= 0 and "
                             f"length_penalty >= 0 needed; got {cfg}")
        self.max_len = task.check_decode_len(int(cfg.max_decode_len),
                                             f"config.evals.{name}.max_decode_len")
        self._predict = jax.jit(task.predict_tokens_fn(self.max_len, cfg.beam_size,
                                                       cfg.length_penalty))

    def run(self, ctx):
        metrics, shown = {}, int(self.cfg.num_examples_shown)
        for split in self.splits:
            sources, references = self.task.decode_references(split, self.cfg.max_examples)
            reference_sets = self.task.reference_sets(split, self.cfg.max_examples)
            several = any(len(refs) > 1 for refs in reference_sets)
            for prefix, params in ctx.variants(self.cfg.ema):
                batches = self.task.decode_batches(split, self.cfg.max_examples,
                                                   process_index=jax.process_index(),
                                                   process_count=jax.process_count())
                predictions = predict_texts(self.task, params, batches, self._predict,
                                            len(references), ctx.mesh,
                                            desc=f"eval {split} decode"
                                                 + (" (EMA)" if prefix else ""))
                metrics[f"{prefix}{split}_exact_match"] = text_metrics.exact_match(
                    predictions, references)
                if several:
                    metrics[f"{prefix}{split}_exact_match_any"] = text_metrics.exact_match_any(
                        predictions, reference_sets)
                metrics[f"{prefix}{split}_bleu"] = text_metrics.bleu(predictions, reference_sets)
                metrics |= {f"{prefix}{split}_{k}": v for k, v in
                            self.task.decode_metrics(split, predictions).items()}
                if prefix == "" and shown:
                    table = _examples_table(sources[:shown], references[:shown],
                                            predictions[:shown])
                    ctx.writer.text(ctx.step, f"{split}_translations", table)
                    if ctx.primary:
                        progress.echo(f"{split} translations @ {ctx.step}:\n{table}")
        return metrics


# ------------------------------------------------------------------------------------ text samples
class SampleTextEvaluator(Evaluator):
    """Text continuations of `prompt` from a decoder-only LM (top-k / nucleus sampling), written
    to TensorBoard and printed; no metrics."""

    @dataclasses.dataclass(frozen=True)
    class Config(Evaluator.Config):
        prompt: str = ""
        length: int = 200
        num_samples: int = 1
        temperature: float = 1.0
        top_k: int = 0                  # 0 = off
        top_p: float = 0.0              # 0 = off
        seed: int = 0

    def __init__(self, name, cfg, task, default_every):
        super().__init__(name, cfg, task, default_every)
        if cfg.num_samples < 1 or cfg.length < 1 or cfg.temperature < 0:
            raise ValueError(f"config.evals.{name}: num_samples >= 1, length >= 1 and "
                             f"temperature >= 0 needed; got {cfg}")
        task.check_sample(cfg.prompt, cfg.length, f"config.evals.{name}")

    def run(self, ctx):
        params = ctx.variants(self.cfg.ema)[-1][1]
        samples = self.task.sample(params, ctx.step, self.cfg)
        body = "\n\n---\n\n".join(samples)
        ctx.writer.text(ctx.step, "sample", body)
        if ctx.primary:
            progress.echo(f"sample @ {ctx.step}:\n{body}")
        return {}


# ------------------------------------------------------------------------------------ images
class SamplesEvaluator(Evaluator):
    """A grid of generated images (a fixed key, so grids show progress) ->
    `<workdir>/samples/step_<N>.png` and TensorBoard; no metrics."""

    @dataclasses.dataclass(frozen=True)
    class Config(Evaluator.Config):
        num_images: int = 64
        seed: int = 0

    def __init__(self, name, cfg, task, default_every):
        super().__init__(name, cfg, task, default_every)
        if cfg.num_images < 1:
            raise ValueError(f"config.evals.{name}.num_images={cfg.num_images} must be >= 1")

    def run(self, ctx):
        from attn_jax.viz.grid import image_grid, save_png

        params = ctx.variants(self.cfg.ema)[-1][1]
        n = int(self.cfg.num_images)
        samples = self.task.generate(params, n, jax.random.PRNGKey(int(self.cfg.seed)), ctx.mesh,
                                     batch_size=n, desc="eval samples")
        grid = image_grid(samples)
        if ctx.primary:
            save_png(os.path.join(ctx.workdir, "samples", f"step_{ctx.step}.png"), grid)
            ctx.writer.image(ctx.step, "samples", grid)
        return {}


class FidEvaluator(Evaluator):
    """FID of `num_samples` generated images against a split, on the pooled features of a
    classifier trained with this repo (`attn_jax.eval.fid`): 'fid'."""

    @dataclasses.dataclass(frozen=True)
    class Config(Evaluator.Config):
        classifier_workdir: str = ""
        num_samples: int = 1000
        split: str = "test"
        batch_size: int = 256
        seed: int = 1

    def __init__(self, name, cfg, task, default_every):
        super().__init__(name, cfg, task, default_every)
        workdir = cfg.classifier_workdir
        if not workdir or not os.path.exists(os.path.join(workdir, "config.json")):
            raise ValueError(f"config.evals.{name}.classifier_workdir={workdir!r} has no "
                             "config.json: train a classifier first (e.g. "
                             "configs/vit_fashion_mnist.py) or drop this evaluator")
        if cfg.num_samples < 2:
            raise ValueError(f"config.evals.{name}.num_samples={cfg.num_samples} must be >= 2 "
                             "(a covariance needs two samples)")

    def run(self, ctx):
        params = ctx.variants(self.cfg.ema)[-1][1]
        return {"fid": self.task.fid(params, ctx.mesh, classifier_workdir=self.cfg.classifier_workdir,
                                     num_samples=self.cfg.num_samples, split=self.cfg.split,
                                     feature_batch_size=self.cfg.batch_size,
                                     rng=jax.random.PRNGKey(int(self.cfg.seed)))}


def bpd_batch_size(batch_size: int, max_examples: int | None, multiple: int = 1) -> int:
    """Images per call of the bound: `batch_size`, but no more than `max_examples` rounded up
    to a multiple of `multiple` (the data-parallel size), since every image in a batch costs T
    model calls whether it counts or not."""
    if not max_examples:
        return int(batch_size)
    return min(int(batch_size), math.ceil(max_examples / multiple) * multiple)


def bits_per_dim(task: Any, params: Any, *, split: str = "test", max_examples: int | None = None,
                 batch_size: int = 64, seed: int = 0, mesh: jax.sharding.Mesh | None = None
                 ) -> dict[str, float]:
    """The task's full variational bound (`task.bpd_terms(params, x0, rng)`, per-example terms
    in bits/dim) averaged over the first `max_examples` (default all) examples of `split`, in
    batches of `bpd_batch_size(batch_size, max_examples, data-parallel size)`.
    Returns the means of the terms, 'num_examples' (the examples averaged) and 'num_rows' (the
    rows the model ran on: num_examples plus the filler of the last batch)."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    fn = task.bpd_terms
    if mesh is not None and batch_size % shd.data_parallel_size(mesh) == 0:
        batch_size = bpd_batch_size(batch_size, max_examples, shd.data_parallel_size(mesh))
        fn = jax.jit(fn, in_shardings=(NamedSharding(mesh, P()), shd.batch_sharding(mesh, 4),
                                       None), out_shardings=shd.batch_sharding(mesh, 1))
        process, processes = jax.process_index(), jax.process_count()
    else:  # one device reads whole batches
        batch_size = bpd_batch_size(batch_size, max_examples)
        mesh, fn, process, processes = None, jax.jit(fn), 0, 1
    batches = task.eval_iterator(split, process_index=process, process_count=processes,
                                 batch_size=batch_size)
    total = progress.num_items(batches)
    if max_examples:
        total = min(total or math.inf, math.ceil(max_examples / batch_size))
    steps = int(getattr(task, "bpd_scan_steps", 1))  # progress ticks per batch
    sums: dict[str, float] = {}
    count = rows = 0
    desc = f"bits/dim of {split} ({max_examples or 'all'} images)"
    with progress.Progress(desc, total * steps if total else None, unit="steps") as p:
        for i, batch in enumerate(batches):
            if mesh is not None:  # host rows -> global arrays; the mask comes back whole
                batch = shd.global_batch(mesh, {"image": batch["image"], "mask": batch["mask"]})
            with p.scan(offset=i * steps):
                out = fn(params, batch["image"], jax.random.fold_in(jax.random.PRNGKey(seed), i))
                out = {k: shd.to_host(v) for k, v in out.items()}
            p.update_to((i + 1) * steps)
            mask = shd.to_host(batch["mask"]) if mesh is not None else batch["mask"]
            rows += len(mask)
            if max_examples is not None:  # drop real examples past max_examples
                mask = mask * (np.cumsum(mask) + count <= max_examples)
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float((v * mask).sum())
            count += int(mask.sum())
            if max_examples is not None and count >= max_examples:
                break  # before the iterator reads another batch
    if count == 0:
        raise ValueError(f"no examples in split {split!r}")
    return {**{k: v / count for k, v in sums.items()}, "num_examples": count, "num_rows": rows}


class BitsPerDimEvaluator(Evaluator):
    """The exact variational bound over all T diffusion steps on `max_examples` images of
    `split` (T model calls per image: run it rarely): '<split>_bpd', '_prior_bpd',
    '_decoder_bpd'."""

    @dataclasses.dataclass(frozen=True)
    class Config(Evaluator.Config):
        split: str = "test"
        max_examples: int = 64
        batch_size: int = 64
        seed: int = 0

    def run(self, ctx):
        out = {}
        for prefix, params in ctx.variants(self.cfg.ema):
            res = bits_per_dim(self.task, params, split=self.cfg.split,
                               max_examples=int(self.cfg.max_examples) or None,
                               batch_size=int(self.cfg.batch_size), seed=int(self.cfg.seed),
                               mesh=ctx.mesh)
            res.pop("num_examples"), res.pop("num_rows")
            out |= {f"{prefix}{self.cfg.split}_{k}": v for k, v in res.items()}
        return out

# ------------------------------------------------------------------------------------ COCO mAP
def predict_detections(task: Any, params: Any, split: str, max_images: int = 0,
                       mesh: jax.sharding.Mesh | None = None, *, top_k: int | None = None,
                       gt: dict[str, Any] | None = None, predict: Callable | None = None,
                       desc: str = "detecting") -> list[dict[str, Any]]:
    """COCO predictions ({'image_id', 'category_id', 'bbox' px, 'score'}; every query of every
    image unless top_k) of a detection task on the images of `gt` (default
    `task.coco_gt(split, max_images)`): `task.predict_fn()` (params, images, pixel_mask or
    None) -> {'logits',
    'boxes'} runs on `task.detection_batches(split, max_images)`, whose rows are gt's images
    in order; all processes gather the outputs (`attn_jax.eval.coco.detections_to_coco`).
    `predict`: a jitted `task.predict_fn()` to reuse (default: jitted here)."""
    from attn_jax.eval import coco

    if mesh is None:
        mesh = shd.make_mesh({"data": 1}, jax.devices()[:1])
    gt = task.coco_gt(split, max_images) if gt is None else gt
    images = gt["images"]
    predict = predict or jax.jit(task.predict_fn())
    batches = task.detection_batches(split, max_images, process_index=jax.process_index(),
                                     process_count=jax.process_count())
    logits, boxes = [], []
    for batch in progress.track(batches, f"{desc} ({len(images)} images)"):
        inputs = shd.global_batch(mesh, {k: batch[k] for k in ("image", "pixel_mask")
                                         if k in batch})
        out = predict(params, inputs["image"], inputs.get("pixel_mask"))
        logits.append(np.asarray(multihost_utils.process_allgather(out["logits"], tiled=True)))
        boxes.append(np.asarray(multihost_utils.process_allgather(out["boxes"], tiled=True)))
    n = len(images)
    logits, boxes = np.concatenate(logits)[:n], np.concatenate(boxes)[:n]  # filler rows last
    categories = [c["id"] for c in gt["categories"]]
    return coco.detections_to_coco(logits, boxes, [im["id"] for im in images],
                                   [(im["height"], im["width"]) for im in images], top_k=top_k,
                                   category_ids=categories)


class CocoMapEvaluator(Evaluator):
    """COCO box AP (pycocotools through `attn_jax.eval.coco.coco_map`) of the task's detections
    on each split: the task supplies `coco_gt(split, max_images)` (a COCO ground-truth dict),
    `detection_batches` and `predict_fn` (`predict_detections` runs them). Writes `<workdir>/coco/<split>_gt.json` (once) and
    `<workdir>/coco/<split>_step_<N>[_ema].json` (the predictions); metrics '<split>_AP',
    '_AP50', '_AP75', '_AP_small', '_AP_medium', '_AP_large' (each in [0, 1]; -1 where the split
    has no object of that size, as pycocotools)."""

    METRICS = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")

    @dataclasses.dataclass(frozen=True)
    class Config(Evaluator.Config):
        splits: tuple[str, ...] = ()    # default: the task's eval_splits()
        max_images: int = 0             # 0 = the whole split
        top_k: int = 0                  # detections kept per image; 0 = every query (DETR)

    def __init__(self, name, cfg, task, default_every):
        super().__init__(name, cfg, task, default_every)
        self.splits = tuple(cfg.splits) or tuple(task.eval_splits())
        task.check_splits(self.splits, f"config.evals.{name}.splits")
        if cfg.max_images < 0 or cfg.top_k < 0:
            raise ValueError(f"config.evals.{name}: max_images >= 0 and top_k >= 0 needed; "
                             f"got {cfg}")
        self._gt: dict[str, Any] = {}
        self._predict = jax.jit(task.predict_fn())

    def run(self, ctx):
        from attn_jax.eval import coco

        metrics = {}
        for split in self.splits:
            if split not in self._gt:
                self._gt[split] = self.task.coco_gt(split, int(self.cfg.max_images))
            gt = self._gt[split]
            directory = os.path.join(ctx.workdir, "coco")
            gt_path = os.path.join(directory, f"{split}_gt.json")
            if ctx.primary and not os.path.exists(gt_path):
                coco.write_coco_json(gt_path, gt)
            for prefix, params in ctx.variants(self.cfg.ema):
                predictions = predict_detections(
                    self.task, params, split, int(self.cfg.max_images), ctx.mesh,
                    top_k=int(self.cfg.top_k) or None, gt=gt, predict=self._predict,
                    desc=f"eval {split} detections" + (" (EMA)" if prefix else ""))
                if ctx.primary:
                    suffix = "_ema" if prefix else ""
                    coco.write_coco_json(
                        os.path.join(directory, f"{split}_step_{ctx.step}{suffix}.json"),
                        predictions)
                stats = coco.coco_map(gt, predictions)
                metrics |= {f"{prefix}{split}_{k}": stats[k] for k in self.METRICS}
        return metrics


EVALUATORS: dict[str, type[Evaluator]] = {
    "loss": LossEvaluator,
    "decode": DecodeEvaluator,
    "sample_text": SampleTextEvaluator,
    "samples": SamplesEvaluator,
    "fid": FidEvaluator,
    "bits_per_dim": BitsPerDimEvaluator,
    "coco_map": CocoMapEvaluator,
}


def build_evaluators(config: Any, task: Any) -> list[Evaluator]:
    """The evaluators of `config.evals` (or, when it is empty, of `task.default_evals()`), each
    section checked against its type's declared keys before anything is compiled."""
    sections: Mapping[str, Any] = dict(config.get("evals") or {}) or task.default_evals()
    default_every = int(config.get("eval_every_steps", 0))
    out = []
    for name, section in sections.items():
        section = dict(section)
        kind = section.get("type", name)
        if kind not in EVALUATORS:
            raise ValueError(f"config.evals.{name}.type={kind!r} is unknown; choose one of "
                             f"{sorted(EVALUATORS)}")
        if kind not in task.EVALUATOR_TYPES:
            raise ValueError(f"config.evals.{name}: task {config.task!r} cannot feed a {kind!r} "
                             f"evaluator; it supports {sorted(task.EVALUATOR_TYPES)}")
        cls = EVALUATORS[kind]
        cfg = parse_section(cls.Config, section, f"config.evals.{name}", ignore=("type",))
        out.append(cls(name, cfg, task, default_every))
    return out


def run_due(evaluators: Sequence[Evaluator], ctx: EvalContext, total_steps: int
            ) -> dict[str, float] | None:
    """Runs the evaluators due at `ctx.step`; their merged metrics, or None if none was due."""
    due = [e for e in evaluators if e.due(ctx.step, total_steps)]
    if not due:
        return None
    metrics: dict[str, float] = {}
    for evaluator in due:
        metrics |= evaluator.run(ctx)
    return metrics
