"""The benchmark scripts run and count FLOPs right (no timing is asserted: speed lives in
benchmarks/ and BENCHMARKS.md)."""

import argparse
import importlib
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench_lm():
    sys.path.insert(0, str(BENCH_DIR))
    try:
        yield importlib.import_module("bench_lm")
    finally:
        sys.path.remove(str(BENCH_DIR))


def test_bench_lm_row_and_model_flops(bench_lm):
    args = argparse.Namespace(batch=2, seq_len=16, dtype=None, iters=1, decode_batch=2,
                              decode_len=4, decode_repeats=1, peak_tflops=100.0)
    row = [c.strip() for c in bench_lm.bench("lm_stdlib", args).strip("|").split("|")]
    assert len(row) == 14 and row[0] == "lm_stdlib" and row[3] == "2x16"
    model_mflop, xla_mflop = float(row[7]), float(row[8])
    # Reference: XLA's own cost analysis of the compiled step. The 6N + 12LdT formula leaves out
    # layer norms, softmax, GELU and the optimizer update, which cost a few percent here.
    assert 0.85 < model_mflop / xla_mflop < 1.05, row
    assert row[10].endswith("%") and float(row[12].replace(",", "")) > 0


def test_model_flops_formula_gpt2_small(bench_lm):
    """6N + 12LdT for GPT-2 small at T=1024: N = 124,439,808 minus the 1024x768 position table."""
    import jax
    import jax.numpy as jnp

    from attn_jax.models import build_model

    model = build_model("decoder_lm", preset="gpt2_small")
    params = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)},
                                               jnp.ones((1, 8), jnp.int32)))["params"]
    n = 124_439_808 - 1024 * 768
    expected = 6 * n + 12 * 12 * 768 * 1024
    assert bench_lm.model_flops_per_token(params, model.config, 1024) == expected


@pytest.mark.slow
def test_drill_kill9_resumes_bit_identically(tmp_path, capsys):
    """One drill of benchmarks/drill_kill9.py on the tiny config (the full N=20 quickstart run is
    in BENCHMARKS.md): killed at a random moment, the rerun ends as the straight run."""
    sys.path.insert(0, str(BENCH_DIR))
    try:
        drill = importlib.import_module("drill_kill9")
    finally:
        sys.path.remove(str(BENCH_DIR))
    config = Path(__file__).parent / "tiny_configs.py"
    status = drill.main(["--n", "1", "--config", str(config), "--steps", "8", "--every", "2",
                         "--warmup", "2",
                         f"--config.data.data_dir={tmp_path / 'tfds'}"])
    out = capsys.readouterr().out
    assert status == 0 and "1 of 1 drills resumed bit-identical" in out, out
