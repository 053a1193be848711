"""Progress of every long phase (attn_jax/progress.py): the rhythm, an ETA without the compiling
first iteration, a bar only on a terminal, ticks from inside jitted scans; then train.py and
sample.py as processes, where every long phase (dataset build, training, each evaluator, sampling,
FID features, bits/dim) prints a progress line with an ETA and no carriage return."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax import progress
from attn_jax.eval.evaluators import bpd_batch_size
from xla_env import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
# "<desc>: 2/4 steps (50%)  2.93 steps/s  elapsed 0:00:03  ETA 0:00:01"
LINE = re.compile(r"^(?P<desc>.+?): (?P<done>\d+)/(?P<total>\d+) (?P<unit>\w+) \(\d+%\)  "
                  r"(?:(?P<rate>[\d.,e+-]+) \w+/s  )?elapsed \d+:\d\d:\d\d  ETA (?P<eta>\S+)$")


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(progress.time, "perf_counter", fake)
    monkeypatch.setattr(progress, "_last_output", [fake.now])  # the last line: now
    monkeypatch.delenv(progress.MODE_ENV, raising=False)
    return fake


def parsed(text):
    return [m.groupdict() for m in map(LINE.match, text.splitlines()) if m]


# ------------------------------------------------------------------ the mechanism
def test_lines_keep_the_rhythm_and_the_eta_leaves_out_the_compiling_first_iteration(clock):
    out = io.StringIO()
    p = progress.Progress("eval test loss", 10, unit="batches", every=5, stream=out,
                          enabled=True)
    clock.now += 30  # the first batch compiles for 30 s
    p.update()
    for _ in range(9):  # then one batch a second
        clock.now += 1
        p.update()
    p.close()
    text = out.getvalue()
    assert "\r" not in text
    lines = parsed(text)
    # At 30 s (the first update is past the 5 s rhythm), then 5 s later; then the closing line.
    assert [(l["done"], l["eta"]) for l in lines] == [("1", "?"), ("6", "0:00:04")]
    assert lines[1]["rate"] == "1"  # 5 batches in the 5 s after the first: compilation left out
    assert text.splitlines()[-1] == "eval test loss: done, 10 batches in 0:00:39 (1 batches/s)"


def test_a_phase_cut_short_does_not_say_done(clock):
    out = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        with progress.Progress("train", 10, unit="steps", every=0, stream=out, enabled=True) as p:
            p.update()
            raise KeyboardInterrupt
    assert parsed(out.getvalue()) and "done" not in out.getvalue()


def test_a_phase_shorter_than_the_rhythm_prints_nothing(clock):
    out = io.StringIO()
    with progress.Progress("sampling", 4, unit="steps", every=20, stream=out, enabled=True) as p:
        for _ in range(4):
            clock.now += 1
            p.update()
    assert out.getvalue() == ""


def test_the_rhythm_runs_across_phases(clock):
    """Short phases one after the other: a line whenever 20 s passed since the last line of any
    phase, so the output is never silent for longer than the rhythm while work goes on."""
    out = io.StringIO()
    with progress.Progress("eval a", 2, unit="batches", every=20, stream=out, enabled=True) as a:
        clock.now += 21
        a.update()  # 21 s after the last line: a line
        clock.now += 1
        a.update()
    # a's closing line, at 22 s, restarts the rhythm for the next phase
    with progress.Progress("eval b", 30, unit="batches", every=20, stream=out,
                           enabled=True) as b:
        for _ in range(30):
            clock.now += 1
            b.update()
    lines = parsed(out.getvalue())
    assert [(l["desc"], l["done"]) for l in lines] == [("eval a", "1"), ("eval b", "20")]
    b_line = out.getvalue().splitlines()[2]
    assert b_line.startswith("eval b: 20/30") and b_line.endswith("ETA 0:00:10")


def test_the_rhythm_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(progress.SECONDS_ENV, "0.5")
    assert progress.Progress("x", 1, enabled=False).every == 0.5
    monkeypatch.setenv(progress.SECONDS_ENV, "soon")
    with pytest.raises(ValueError, match=progress.SECONDS_ENV):
        progress.rhythm_seconds()


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_one_live_bar_and_lines_above_it(clock, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    term = Terminal()
    with progress.Progress("train", 5, unit="steps", every=0, stream=term, enabled=True) as p:
        for step in range(1, 6):
            clock.now += 1
            p.update_to(step)
        p.write("step 5/5  loss 0.1")
    text = term.getvalue()
    assert "\r" in text and "train:" in text and "5/5 steps" in text
    assert "step 5/5  loss 0.1\n" in text
    assert not parsed(text)  # the bar, not plain lines
    monkeypatch.setenv(progress.MODE_ENV, "lines")  # forced plain lines on a terminal
    term = Terminal()
    with progress.Progress("train", 2, unit="steps", every=0, stream=term, enabled=True) as p:
        p.update()
        clock.now += 1
        p.update()
    assert "\r" not in term.getvalue() and len(parsed(term.getvalue())) == 2


def test_scan_ticks_reach_the_progress_from_a_jitted_sharded_scan(clock):
    """The ticker inside a jitted lax.scan over a batch split across 4 devices reports each
    step once to the innermost Progress.scan(); without a receiver it does nothing."""
    tick = progress.scan_ticker(40, ticks=10)  # a host callback every 4 steps

    def body(x, i):
        tick(i)
        return x * 0.5 + 1.0, None

    mesh = jax.make_mesh((4,), ("data",), devices=jax.devices()[:4],
                         axis_types=(jax.sharding.AxisType.Auto,))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    fn = jax.jit(lambda x: jax.lax.scan(body, x, jnp.arange(40))[0], out_shardings=sharding)
    x = jax.device_put(jnp.zeros((8, 3)), sharding)
    seen = []
    with progress.Progress("scan", 80, unit="steps", enabled=False) as p:
        original = p.update_to
        p.update_to = lambda done, quiet=False: (seen.append(done), original(done, quiet))
        for batch in range(2):
            with p.scan(offset=batch * 40):
                np.asarray(fn(x))
    assert p.done == 80
    assert sorted(set(seen)) == [4 * k for k in range(1, 21)]
    np.asarray(fn(x))  # no receiver: nothing happens, nothing fails


def test_bpd_batches_never_exceed_the_examples_asked_for():
    assert bpd_batch_size(64, 4) == 4           # sample.py --bpd-examples 4: 4 images, not 64
    assert bpd_batch_size(64, 5, multiple=2) == 6  # rounded up to split over 2 devices
    assert bpd_batch_size(8, 1000) == 8
    assert bpd_batch_size(64, None) == 64


# ------------------------------------------------------------------ every long phase, as processes
def _env(data_dir, jax_cache, rhythm="0"):
    return {**os.environ, "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": xla_flags(1),
            "ATTN_JAX_TINY_DATA_DIR": data_dir, progress.SECONDS_ENV: rhythm,
            "JAX_COMPILATION_CACHE_DIR": jax_cache,  # the run's (tests/conftest.py)
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def _run(args, env):
    result = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                            timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


DIFFUSION_CONFIG = """
import os, sys
sys.path.insert(0, {tests!r})
from tiny_configs import tiny_config


def get_config():
    config = tiny_config("diffusion", os.environ["ATTN_JAX_TINY_DATA_DIR"])
    config.evals = dict(
        loss=dict(type="loss", ema=False), samples=dict(type="samples", num_images=8),
        fid=dict(type="fid", classifier_workdir={classifier!r}, num_samples=32, batch_size=16),
        bpd=dict(type="bits_per_dim", max_examples=2, batch_size=2, ema=False))
    return config
"""


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """A classifier (it builds the digits into a fresh data dir), a diffusion run with every
    image evaluator, sample.py on it with FID and bits/dim, and a seq2seq run (decoding): the
    stdout and stderr of each, with the progress rhythm at 0 s (a line at every update), off a
    terminal."""
    root = tmp_path_factory.mktemp("progress")
    env = _env(str(root / "tfds"), os.environ["JAX_COMPILATION_CACHE_DIR"])
    classifier = str(root / "classifier")
    runs = {"classifier": _run(["train.py", "--config", "tests/tiny_configs.py:classifier",
                                "--workdir", classifier], env)}
    config = root / "diffusion_config.py"
    config.write_text(DIFFUSION_CONFIG.format(tests=TESTS, classifier=classifier))
    diffusion = str(root / "diffusion")
    runs["diffusion"] = _run(["train.py", "--config", str(config), "--workdir", diffusion,
                              "--config.log_every_steps=4"], env)
    runs["sample"] = _run(["sample.py", "--workdir", diffusion, "--num", "300", "--batch-size",
                           "150", "--bpd", "--bpd-examples", "3", "--fid",
                           "--classifier-workdir", classifier, "--out", str(root / "out")], env)
    runs["seq2seq"] = _run(["train.py", "--config", "tests/tiny_configs.py:seq2seq",
                            "--workdir", str(root / "seq2seq"), "--config.log_every_steps=4"],
                           env)
    return root, runs


PHASES = {
    "classifier": ["building digits_sklearn train", "building digits_sklearn test",
                   "eval test loss"],
    "diffusion": ["train", "eval test loss", "eval samples (8 images)", "FID features of test",
                  "FID sampling (32 images)", "FID features of the samples (32 images)",
                  "bits/dim of test (2 images)"],
    "sample": ["sampling (300 images)", "FID features of test",
               "FID features of the samples (300 images)", "bits/dim of test (3 images)"],
    "seq2seq": ["train", "eval test decode (32 examples)", "eval validation loss"],
}


@pytest.mark.parametrize("run", sorted(PHASES))
def test_every_long_phase_prints_progress_with_an_eta_and_no_carriage_return(outputs, run):
    _, runs = outputs
    result = runs[run]
    assert "\r" not in result.stdout and "\r" not in result.stderr
    lines = parsed(result.stdout)
    for desc in PHASES[run]:
        mine = [l for l in lines if l["desc"] == desc]
        assert mine, f"no progress line for {desc!r} in:\n{result.stdout[-4000:]}"
        assert any(re.fullmatch(r"\d+:\d\d:\d\d", l["eta"]) for l in mine), mine
        assert int(mine[-1]["done"]) <= int(mine[-1]["total"])


def test_runs_name_their_workdir_and_devices_and_builds_are_quiet(outputs):
    root, runs = outputs
    out = runs["diffusion"].stdout
    assert f"workdir: {root / 'diffusion'}\n" in out and "devices: 1 x cpu\n" in out
    build = runs["classifier"].stdout + runs["classifier"].stderr
    assert "building dataset digits_sklearn" in build and "built dataset digits_sklearn" in build
    for noise in ("Downloading and preparing", "Unknown size", "has no dataset_info.json"):
        assert noise not in build
    assert sorted(os.listdir(root / "tfds")) == [".digits_sklearn.lock", "digits_sklearn"]


def test_sample_py_evaluates_exactly_the_bpd_examples_asked_for(outputs):
    """--bpd-examples 3: the bound runs on 3 images (one batch of 3, not of 64), and reading the
    workdir leaves no orbax read-only warnings."""
    _, runs = outputs
    result = runs["sample"]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["bpd_examples"] == 3 and summary["bpd_rows"] == 3
    assert np.isfinite(summary["test_bpd"]) and summary["fid"] > 0
    assert "read only" not in result.stderr and "read_only" not in result.stderr
