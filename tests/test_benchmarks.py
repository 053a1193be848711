"""The benchmark scripts run and count FLOPs right (no timing is asserted: speed lives in
benchmarks/ and BENCHMARKS.md)."""

import argparse
import importlib
import importlib.util
import subprocess
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
def test_drill_kill9_resumes_bit_identically(tmp_path, capsys, jax_cache):
    """One drill of benchmarks/drill_kill9.py on the tiny config (the full N=20 quickstart run is
    in BENCHMARKS.md): killed at a random moment, the rerun ends as the straight run."""
    sys.path.insert(0, str(BENCH_DIR))
    try:
        drill = importlib.import_module("drill_kill9")
    finally:
        sys.path.remove(str(BENCH_DIR))
    config = Path(__file__).parent / "tiny_configs.py"
    status = drill.main(["--n", "1", "--config", str(config), "--steps", "8", "--every", "2",
                         "--warmup", "2", "--cache-dir", jax_cache,
                         f"--config.data.data_dir={tmp_path / 'tfds'}"])
    out = capsys.readouterr().out
    assert status == 0 and "1 of 1 drills resumed bit-identical" in out, out


def _table(out: str) -> list[list[str]]:
    """The data rows of the markdown table in `out`, as lists of stripped cells."""
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in row.strip("|").split("|")] for row in rows[1:]]


def test_bench_peers_quick_table():
    """bench_peers.py --quick: a row per workload and available implementation (torch only where
    installed), equal parameter counts, positive times, ratios, rates and matmul fractions."""
    impls = ["attn_jax", "flax.linen"]
    if importlib.util.find_spec("torch") is not None:
        impls.append("torch eager")
    # The environment's XLA flags (tests/xla_env.py: no backend optimisations; not a timing).
    proc = subprocess.run([sys.executable, str(BENCH_DIR / "bench_peers.py"), "--quick"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head[:4] == ["workload", "implementation", "params", "ms/step"], head
    assert head[4:4 + len(impls)] == [f"vs {i}" for i in impls], head
    rows = _table(proc.stdout)
    assert [(r[0], r[1]) for r in rows] == [(w, i) for w in ("vit", "lm") for i in impls], rows
    for row in rows:
        cells = dict(zip(head, row))
        assert float(cells["ms/step"]) > 0 and float(cells["GFLOP/s"]) > 0, row
        assert float(cells[f"vs {row[1]}"]) == 1.0, row
        assert all(float(cells[f"vs {i}"]) > 0 for i in impls), row
        assert float(cells["% of XLA matmul"].rstrip("%")) >= 0, row
        if "torch eager" in impls:
            assert cells["% of torch matmul"].endswith("%"), row
    for workload in ("vit", "lm"):
        assert len({r[2] for r in rows if r[0] == workload}) == 1, rows  # equal parameter counts


def test_gpu_suite_dry_run():
    """benchmarks/gpu_suite.sh --dry-run prints every command of the GPU suite and checks each
    against its script's own argparse parser and known configs, running none of them."""
    proc = subprocess.run(["bash", str(BENCH_DIR / "gpu_suite.sh"), "--dry-run"],
                          capture_output=True, text=True, timeout=120, cwd=BENCH_DIR.parent)
    out = proc.stdout
    assert proc.returncode == 0 and "every command checks out" in out, (
        out[-3000:] + proc.stderr[-3000:])
    checked = [line for line in out.splitlines() if line.startswith("ok: ")]
    scripts = [line.split("benchmarks/")[1].split()[0] for line in checked]
    assert scripts == ["bench_attention.py", "bench_attention.py", "bench_vit.py", "bench_lm.py",
                       "bench_unet.py"], out
    assert "--impls reference,xla,cudnn,pallas" in out and "--configs cifar10" in out
    assert "--configs vit_b16_imagenet --batch 256 --dtype bfloat16" in out
    assert "--configs gpt2_small --batch 16 --seq-len 1024 --dtype bfloat16 --dropout 0" in out


def test_check_commands_rejects_bad_flags_and_names():
    """What the dry run relies on: a misspelt flag, a bad value and an unknown config fail."""
    lines = ["python benchmarks/bench_vit.py --configs default --batchh 2",
             "python benchmarks/bench_unet.py --dtype float64",
             "python benchmarks/bench_lm.py --configs vit_fashion_mnist",
             "python benchmarks/bench_attention.py --impls xla,flash",
             "python benchmarks/bench_unet.py --configs cifar10 --steps-scale 0.2"]
    proc = subprocess.run([sys.executable, str(BENCH_DIR / "check_commands.py")],
                          input="\n".join(lines), capture_output=True, text=True, timeout=60,
                          cwd=BENCH_DIR.parent)
    verdicts = [line.split(":")[0] for line in proc.stdout.splitlines()]
    assert proc.returncode == 1 and verdicts == ["FAIL"] * 4 + ["ok"], proc.stdout + proc.stderr
    assert "--batchh" in proc.stdout and "not an 'lm' config" in proc.stdout
    assert "'flash'" in proc.stdout


def test_gpu_suite_refuses_without_gpu():
    """Without --dry-run on a machine with no nvidia-smi the suite stops at once, status 2."""
    import shutil

    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi")
    proc = subprocess.run(["bash", str(BENCH_DIR / "gpu_suite.sh")], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2 and "needs an NVIDIA GPU" in proc.stderr, proc.stderr
