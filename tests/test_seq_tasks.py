"""The text tasks (seq2seq, lm) through the shared trainer, transfer learning, attention maps.

References: losses recomputed with a NumPy log-softmax over the evaluation batches; bits per byte
from its definition (one byte per token for the byte tokenizer); the same run on one device for
the sharded runs; the checkpoint's own arrays for transfer learning; the greedy decoder's tokens
for the teacher-forced pass the attention maps are drawn from.
"""

from __future__ import annotations

import json
import logging
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import pytest
from PIL import Image

from attn_jax import tasks
from attn_jax.data import text
from attn_jax.data.tokenizers import ByteTokenizer, SentencePieceTokenizer
from attn_jax.models import build_model
from attn_jax.models.transformer import TransformerConfig
from attn_jax.eval.evaluators import build_evaluators
from attn_jax.train.init import Initializer, flatten
from attn_jax.train import loop
from tiny_configs import tiny_config
from attn_jax.train.restore import load_params
from attn_jax.viz import attention_maps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ tiny configs
def tiny_seq2seq_config(data_dir: str = "") -> ml_collections.ConfigDict:
    return tiny_config("seq2seq", data_dir)


def tiny_lm_config(data_dir: str) -> ml_collections.ConfigDict:
    return tiny_config("lm", data_dir)


TINY_CONFIGS = {"seq2seq": tiny_seq2seq_config, "lm": tiny_lm_config}


# ------------------------------------------------------------------ helpers
class Trainer:
    """train_and_evaluate that keeps the tasks it built, so tests can look at them."""

    def __init__(self, monkeypatch):
        self.tasks: list = []

        def get_task(name):
            def build(config):
                task = tasks.get_task(name)(config)
                self.tasks.append(task)
                return task
            return build

        monkeypatch.setattr(loop, "get_task", get_task)

    def __call__(self, config, workdir, devices=None):
        return loop.train_and_evaluate(config, str(workdir), devices)


@pytest.fixture
def trainer(monkeypatch):
    return Trainer(monkeypatch)


def _rows(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _losses(workdir: str) -> list[float]:
    return [r["loss"] for r in _rows(workdir) if r["split"] == "train"]


def _flat(tree) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in flatten(tree).items()}


def _nll_numpy(logits: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> float:
    logits = logits.astype(np.float64)
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    picked = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    return float(((logz - picked) * weights).sum())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """Each tiny config trained once on one device: {task: (workdir, state, final metrics)}."""
    out = {}
    for name, make in TINY_CONFIGS.items():
        workdir = str(tmp_path_factory.mktemp(name))
        state, final = loop.train_and_evaluate(make(data_dir), workdir, jax.devices()[:1])
        out[name] = workdir, state, final
    return out


# ------------------------------------------------------------------ seq2seq
def test_seq2seq_trains_evaluates_and_decodes(runs):
    """Loss falls; validation loss = NumPy NLL over the real target tokens; decoding metrics
    and example translations are reported."""
    workdir, state, final = runs["seq2seq"]
    losses = _losses(workdir)
    assert len(losses) == 4 and np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert 0.0 <= final["test_exact_match"] <= 1.0 and 0.0 <= final["test_bleu"] <= 100.0

    config, params = load_params(workdir)
    task = tasks.get_task("seq2seq")(config)
    apply = jax.jit(task.model.apply)
    nll = tokens = 0.0
    for batch in task.eval_iterator("validation", process_index=0, process_count=1):
        logits = np.asarray(apply({"params": params}, batch["inputs"], batch["targets"]))
        weights = (batch["targets"] != 0) * batch["mask"][:, None]
        nll += _nll_numpy(logits, batch["targets"], weights)
        tokens += weights.sum()
    assert tokens == sum(len(t) + 1 for _, t in task.pairs("validation"))  # ISO + eos
    np.testing.assert_allclose(final["validation_loss"], nll / tokens, rtol=1e-5)

    shown = [r for r in _rows(workdir) if r["split"] == "text"]
    table = shown[-1]["test_translations"].splitlines()
    assert len(table) == 2 + 3 and task.pairs("test")[0][1] in table[2]


def test_beam_search_decoding_runs_through_the_task(runs):
    """beam_size > 1 decodes with `decoding.translate`; its best beam never scores below the
    greedy output under the model (reference: the teacher-forced log-probability)."""
    workdir, _, _ = runs["seq2seq"]
    config, params = load_params(workdir)
    beam = greedy = tasks.get_task("seq2seq")(config)
    sources = [s for s, _ in beam.pairs("test")[:16]]

    def logprob(task, outputs):
        ids = task.tokenizer.encode_batch(outputs, task.max_tgt_len)
        src = task.tokenizer.encode_batch(sources, task.max_src_len)
        logits = np.asarray(apply({"params": params}, src, ids))
        return -np.array([_nll_numpy(logits[i:i + 1], ids[i:i + 1], ids[i:i + 1] != 0)
                          for i in range(len(ids))])

    apply = jax.jit(beam.model.apply)
    b, g = beam.translate(params, sources, beam_size=3), greedy.translate(params, sources)
    finished = [i for i, s in enumerate(b) if len(s) + 1 < beam.max_tgt_len]
    assert np.all(logprob(beam, b)[finished] >= logprob(greedy, g)[finished] - 1e-4)


# ------------------------------------------------------------------ lm
def test_lm_trains_and_reports_bits_per_byte(runs):
    """Loss falls; validation loss = NumPy NLL over every validation byte once; bits per byte =
    loss / ln 2 (one byte per token); perplexity = exp(loss); a sample continues the prompt."""
    workdir, _, final = runs["lm"]
    losses = _losses(workdir)
    assert len(losses) == 4 and np.all(np.isfinite(losses)) and losses[-1] < losses[0]

    config, params = load_params(workdir)
    task = tasks.get_task("lm")(config)
    texts = task.texts("validation")
    docs = [np.frombuffer(t.encode(), np.uint8).astype(np.int32) + 3 for t in texts]
    stream = np.concatenate([[2]] + [np.append(d, 2) for d in docs])  # eos, doc, eos, ...
    windows = text.eval_windows(stream, 32)
    logits = np.asarray(jax.jit(task.model.apply)({"params": params}, windows[:, :-1]))
    nll = _nll_numpy(logits, windows[:, 1:], windows[:, 1:] != 0)
    num_bytes = text.lm_target_bytes(texts)
    assert len(stream) - 1 == num_bytes
    np.testing.assert_allclose(final["validation_loss"], nll / num_bytes, rtol=1e-5)
    np.testing.assert_allclose(final["validation_bits_per_byte"],
                               nll / (math.log(2) * num_bytes), rtol=1e-5)
    metrics = task.eval_metrics("validation", {"loss": final["validation_loss"]})
    np.testing.assert_allclose(metrics["perplexity"], math.exp(final["validation_loss"]))

    sample = [r for r in _rows(workdir) if r["split"] == "text"][-1]["sample"]
    assert sample.startswith("def ") and sample.count("---") == 1  # two samples


def test_spm_bits_per_byte_counts_bytes_not_tokens(data_dir, tmp_path):
    """SentencePiece LM: the per-row scale makes token-NLL sums into bits per *byte*
    (reference: NLL sum / (ln 2 * UTF-8 bytes + eos) from `text.bits_per_byte`)."""
    config = tiny_lm_config(data_dir)
    config.data.update(tokenizer="sentencepiece", vocab_size=48)  # the corpus has few pieces
    task = tasks.get_task("lm")(config)
    task.workdir = str(tmp_path)
    params = task.init_params(jax.random.PRNGKey(0))
    params = nn.unbox(params)
    sums, eval_sums = {}, jax.jit(task.eval_sums)
    for batch in task.eval_iterator("validation", process_index=0, process_count=1):
        for k, v in eval_sums(params, batch).items():
            sums[k] = sums.get(k, 0.0) + float(v)
    stream = task.stream("validation")
    assert sums["count"] == len(stream) - 1 < text.lm_target_bytes(task.texts("validation"))
    np.testing.assert_allclose(
        sums["bits_per_byte"] / sums["count"],
        text.bits_per_byte(sums["loss"], text.lm_target_bytes(task.texts("validation"))),
        rtol=1e-5)
    assert os.path.exists(tmp_path / "spm.model")


# ------------------------------------------------------------------ sharding
@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_same_losses_and_params_on_a_2x2x2_mesh(name, runs, data_dir, tmp_path):
    """data=2, fsdp=2, tensor=2 on 8 devices == 1 device: losses, parameters, eval metrics
    (decoded exact match / BLEU included)."""
    ref_dir, ref_state, ref_final = runs[name]
    config = TINY_CONFIGS[name](data_dir)
    config.mesh = dict(data=2, fsdp=2, tensor=2)
    state, final = loop.train_and_evaluate(config, str(tmp_path))
    np.testing.assert_allclose(_losses(str(tmp_path)), _losses(ref_dir), rtol=2e-5)
    ref = _flat(ref_state.params)
    for key, value in _flat(state.params).items():
        np.testing.assert_allclose(value, ref[key], rtol=1e-4, atol=1e-6, err_msg=key)
    assert final.keys() == ref_final.keys()
    for key in ref_final:
        np.testing.assert_allclose(final[key], ref_final[key], rtol=1e-4, err_msg=key)
    query = state.params["decoder"]["layer_0"]["self_attention"]["query"]["kernel"]
    assert query.sharding.shard_shape(query.shape) == (16, 4, 4)  # embed/fsdp, heads/tensor


# ------------------------------------------------------------------ tokenizer and resume
def test_sentencepiece_is_saved_in_the_workdir_and_reused_on_resume(trainer, data_dir,
                                                                    tmp_path, monkeypatch):
    """The first run trains spm.model into the workdir; the resumed run loads the same bytes
    and never trains again (training is patched to fail)."""
    config = tiny_lm_config(data_dir)
    config.data.update(tokenizer="sentencepiece", vocab_size=48)
    config.evals = dict(loss=dict(type="loss"))
    config.total_steps = 2
    workdir = tmp_path / "run"
    trainer(config, workdir, jax.devices()[:1])
    model = (workdir / "spm.model").read_bytes()
    assert trainer.tasks[-1].tokenizer.vocab_size == 48

    def no_training(*args, **kwargs):
        raise AssertionError("SentencePiece was trained again on resume")

    monkeypatch.setattr(SentencePieceTokenizer, "train", no_training)
    config.total_steps = 4
    config.allow_changes = "total_steps"  # continuing the 2-step run on purpose
    trainer(config, workdir, jax.devices()[:1])
    assert (workdir / "spm.model").read_bytes() == model
    assert [r["step"] for r in _rows(str(workdir)) if r["split"] == "train"] == [1, 2, 3, 4]


def test_sentencepiece_needs_a_workdir():
    config = tiny_seq2seq_config()
    config.data.update(tokenizer="sentencepiece", vocab_size=64)
    task = tasks.get_task("seq2seq")(config)
    with pytest.raises(ValueError, match="task.workdir"):
        task.train_iterator(seed=0, process_index=0, process_count=1)


# ------------------------------------------------------------------ fine-tuning (config.init)
FROZEN = (("embedding/embedding", 0.0), ("decoder/layer_0/.*", 0.0))


def _finetune_config(data_dir, init_from, lr_mults=()):
    config = tiny_lm_config(data_dir)
    config.model.num_decoder_layers = 2  # layer_1 is new
    config.init.path = init_from
    config.optim.lr_mults = lr_mults
    config.evals = dict(loss=dict(type="loss"))
    config.optim.update(name="adamw", weight_decay=0.1, learning_rate=1e-2)
    config.total_steps = 3
    return config


def test_init_loads_matching_parameters_and_lr_mult_zero_holds_them(runs, data_dir, trainer,
                                                                     tmp_path):
    """config.init: loaded parameters equal the checkpoint's arrays; the new layer is freshly
    initialised; after AdamW steps with weight decay (FSDP over 2 devices) the multiplier-0
    group is bit-identical, the others moved."""
    pretrained_dir = runs["lm"][0]
    _, pretrained = load_params(pretrained_dir)
    pretrained = _flat(pretrained)
    config = _finetune_config(data_dir, pretrained_dir, FROZEN)
    config.mesh = dict(data=1, fsdp=2, tensor=1)

    task = tasks.get_task("lm")(config)
    initializer = Initializer.from_config(config)
    init = _flat(nn.unbox(jax.jit(lambda r: initializer.apply(task.init_params(r)))(
        jax.random.PRNGKey(0))))
    report = initializer.report
    assert sorted(report.loaded) == sorted(pretrained)
    assert report.initialised and all(p.startswith("decoder/layer_1/") for p in report.initialised)
    assert not report.mismatched and not report.unused and not report.adapted
    for path in pretrained:
        np.testing.assert_array_equal(init[path], pretrained[path], err_msg=path)

    state, _ = trainer(config, tmp_path / "finetune", jax.devices()[:2])
    final = _flat(state.params)
    frozen = [p for p in pretrained if p == "embedding/embedding" or p.startswith("decoder/layer_0/")]
    assert len(frozen) == 1 + 16
    for path in pretrained:
        if path in frozen:
            np.testing.assert_array_equal(final[path], pretrained[path], err_msg=path)
        else:
            assert not np.allclose(final[path], pretrained[path]), path


@pytest.mark.parametrize("change, match", [
    (dict(lr_mults=(("decoder/layer_9/.*", 0.0),)), "match no parameter"),
    (dict(lr_mults=(("(unclosed", 0.0),)), "not a regex"),
    (dict(tokenizer="sentencepiece", vocab_size=64), "tokenizer"),
])
def test_bad_init_settings(change, match, runs, data_dir, tmp_path):
    config = _finetune_config(data_dir, runs["lm"][0], change.pop("lr_mults", ()))
    config.data.update(change)
    with pytest.raises(ValueError, match=match):
        loop.train_and_evaluate(config, str(tmp_path / "bad"), jax.devices()[:1])
    assert not (tmp_path / "bad" / "checkpoints").exists()


# ------------------------------------------------------------------ attention maps
def test_attention_maps_of_a_trained_model(runs, tmp_path, capsys):
    """The CLI writes one PNG per layer and kind; the captured weights are distributions over
    the keys, causal in decoder self-attention, and come from a teacher-forced pass whose
    arg-max reproduces the greedy (cached) translation."""
    workdir = runs["seq2seq"][0]
    maps = attention_maps.main(["--workdir", workdir, "--text", "21. November 2026", "--out",
                                str(tmp_path)])
    names = sorted(os.listdir(tmp_path))
    assert names == ["decoder_layer0_cross_attention.png", "decoder_layer0_self_attention.png",
                     "encoder_layer0_self_attention.png"]
    printed = capsys.readouterr().out
    assert printed.startswith("'21. November 2026' -> ")
    assert all(str(tmp_path / n) in printed for n in names)
    for name in names:
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and min(image.size) > 200

    out, src = maps.output_ids, maps.source_ids
    assert src == ByteTokenizer().encode("21. November 2026") + [2]
    np.testing.assert_array_equal(maps.logits.argmax(-1)[0], out)
    assert maps.weights["decoder/layer_0/cross_attention"].shape == (1, 8, len(out), len(src))
    assert maps.weights["encoder/layer_0/self_attention"].shape == (1, 8, len(src), len(src))
    for w in maps.weights.values():
        np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
    causal = maps.weights["decoder/layer_0/self_attention"][0]
    assert np.all(np.triu(causal, k=1) == 0) and np.all(causal[:, 0, 0] == 1.0)


def test_attention_maps_that_fail_leave_no_folder_and_no_read_only_warnings(runs, tmp_path,
                                                                            monkeypatch, caplog):
    workdir = runs["seq2seq"][0]

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(attention_maps, "plot_heads", broken)
    out = tmp_path / "maps"
    with caplog.at_level(logging.WARNING), pytest.raises(OSError, match="disk full"):
        attention_maps.main(["--workdir", workdir, "--text", "21. November 2026", "--out",
                             str(out)])
    assert not out.exists()
    assert "read only" not in caplog.text and "read_only" not in caplog.text


def test_token_labels_show_characters_and_bytes():
    tok = ByteTokenizer()
    ids = [1] + tok.encode("März 年") + [2]
    assert attention_maps.token_labels(tok, ids) == [
        "<s>", "M", "ä", "·", "r", "z", "␣", "U+5E74", "·", "·", "</s>"]


# ------------------------------------------------------------------ models and configs
def test_model_registry_builds_presets_with_overrides():
    """Reference: TransformerConfig's own preset constructors."""
    model = build_model("transformer", preset="base", vocab_size=1000, dropout_rate=0.3)
    assert model.config == TransformerConfig.transformer_base(vocab_size=1000, dropout_rate=0.3)
    lm = build_model("decoder_lm", preset="gpt2_small", num_decoder_layers=2, dtype="bfloat16")
    assert lm.config == TransformerConfig.gpt2_small(num_decoder_layers=2, dtype=jnp.bfloat16)
    with pytest.raises(ValueError, match="emb_dimm"):
        build_model("transformer", vocab_size=10, emb_dimm=8)
    with pytest.raises(ValueError, match="preset"):
        build_model("decoder_lm", preset="gpt3")


@pytest.mark.parametrize("change, match", [
    (lambda c: c.data.update(dataset="wmt15"), "dataset"),
    (lambda c: c.data.update(max_src_lenn=3), "unknown key 'max_src_lenn'"),
    (lambda c: c.data.update(beam_size=3), "moved to config.evals.decode.beam_size"),
    (lambda c: c.model.update(name="decoder_lm"), "EncoderDecoderModel contract"),
    (lambda c: c.model.update(vocab_size=300), "vocab_size"),
    (lambda c: c.model.update(max_len=16), "max_len"),
    (lambda c: c.evals.decode.update(splits=["dev"]), "dev"),
    (lambda c: c.evals.decode.update(beam_sise=2), "beam_sise' \\(did you mean 'beam_size'"),
    (lambda c: c.evals.decode.update(max_decode_len=40), "max_decode_len=40"),
])
def test_bad_seq2seq_configs(change, match):
    """Every section (data, model, each evaluator) fails before compiling, naming the key."""
    config = tiny_seq2seq_config()
    change(config)
    with pytest.raises(ValueError, match=match):
        task = tasks.get_task("seq2seq")(config)
        task.validate()
        build_evaluators(config, task)


@pytest.mark.parametrize("name", ["transformer_dates", "transformer_wmt14", "lm_stdlib", "lm1b",
                                  "lm_stdlib_finetune"])
def test_configs_build_their_models(name):
    """Every shipped config constructs its task and traces its model (no data is read)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    assert module.__doc__ and "python train.py" in module.__doc__
    config.init.path = ""  # the fine-tuning run's checkpoint does not exist here
    task = tasks.get_task(config.task)(config)
    task.validate()
    build_evaluators(config, task)
    params = jax.eval_shape(task.init_params, jax.random.PRNGKey(0))
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)) > 0


def test_compare_seq2seq_table_and_length_buckets(runs, tmp_path, capsys):
    """benchmarks/compare_seq2seq.py on a trained run under two names: one table row each with
    the run's parameter count, the per-length table's counts are the sources' UTF-8 lengths
    bucketed by hand, its exact match averages (weighted) to the overall one, the PNG is
    written; runs on different data are refused; a saved record (--save-records) gives the
    live run's rows, and a record of other examples or without its fields is refused."""
    import importlib.util
    import shutil

    spec = importlib.util.spec_from_file_location(
        "compare_seq2seq", os.path.join(ROOT, "benchmarks", "compare_seq2seq.py"))
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    workdir, state, _ = runs["seq2seq"]
    png = tmp_path / "by_length.png"
    assert compare.main(["--run", f"a={workdir}", "--run", f"b={workdir}", "--max-examples",
                         "24", "--bucket-bytes", "8", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    main, lengths_table = (out[out.index(head):] for head in ("| run |", "| source bytes |"))
    main_rows, length_rows = ([[c.strip() for c in line.strip("|").split("|")]
                               for line in table.split("\n\n")[0].splitlines()[2:]]
                              for table in (main, lengths_table))
    n_params = sum(np.size(x) for x in jax.tree.leaves(state.params))
    assert [r[0] for r in main_rows] == ["a", "b"] and main_rows[0][2] == f"{n_params:,}"
    assert main_rows[0][1:] == main_rows[1][1:]
    task = tasks.get_task("seq2seq")(tiny_seq2seq_config(""))
    lengths = [len(s.encode()) for s, _ in task.decode_pairs("test", 24)]
    want = {}
    for n in lengths:
        want[n // 8] = want.get(n // 8, 0) + 1
    assert [(r[0], int(r[1])) for r in length_rows] == [
        (f"{8 * k}-{8 * k + 7}", c) for k, c in sorted(want.items())]
    overall = float(main_rows[0][5].rstrip("%"))
    weighted = sum(int(r[1]) * float(r[2].rstrip("%")) for r in length_rows) / len(lengths)
    assert abs(weighted - overall) < 0.1 * len(length_rows)  # per-bucket rounding to 0.1%
    with Image.open(png) as image:
        assert image.format == "PNG"
    other = tmp_path / "other"
    shutil.copytree(workdir, other)
    config = json.load(open(other / "config.json"))
    config["data"]["seed"] = 1
    json.dump(config, open(other / "config.json", "w"))
    with pytest.raises(SystemExit, match="different data"):
        compare.main(["--run", f"a={workdir}", "--run", f"c={other}", "--max-examples", "4"])
    # A key left out (its default) and the same key written at its default: the same data (a
    # run saved before a key existed compares equal to one saved after).
    config["data"] = json.load(open(os.path.join(workdir, "config.json")))["data"]
    assert "canvas_size" not in config["data"]
    config["data"]["canvas_size"] = 0  # the declared default
    json.dump(config, open(other / "config.json", "w"))
    assert compare.main(["--run", f"a={workdir}", "--run", f"c={other}", "--max-examples",
                         "4"]) == 0
    capsys.readouterr()
    # A saved record stands in for its workdir: the same table rows as the live run.
    records = tmp_path / "records"
    assert compare.main(["--run", f"a={workdir}", "--max-examples", "24",
                         "--save-records", str(records)]) == 0
    capsys.readouterr()
    assert compare.main(["--record", f"a={records / 'a.json'}", "--run", f"b={workdir}",
                         "--max-examples", "24", "--bucket-bytes", "8"]) == 0
    assert capsys.readouterr().out == out[:out.index(str(png))].rstrip("\n") + "\n"
    record = json.load(open(records / "a.json"))
    with pytest.raises(SystemExit, match="other examples"):  # a record of 24, a live run of 4
        compare.main(["--record", f"a={records / 'a.json'}", "--run", f"b={workdir}",
                      "--max-examples", "4"])
    del record["predictions"]
    json.dump(record, open(records / "bad.json", "w"))
    with pytest.raises(ValueError, match=r"lacks \['predictions'\]"):
        compare.main(["--record", f"x={records / 'bad.json'}"])
