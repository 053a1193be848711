"""The benchmark scripts run and count FLOPs right (no timing is asserted: speed lives in
benchmarks/ and BENCHMARKS.md)."""

import argparse
import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"


def _bench_module(name: str):
    """benchmarks/NAME.py imported (the folder on sys.path only while it imports)."""
    sys.path.insert(0, str(BENCH_DIR))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH_DIR))


@pytest.fixture(scope="module")
def bench_lm():
    return _bench_module("bench_lm")


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
    drill = _bench_module("drill_kill9")
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
        assert float(cells["% of XLA MLP-shape matmul"].rstrip("%")) > 0, row
    for workload in ("vit", "lm"):
        assert len({r[2] for r in rows if r[0] == workload}) == 1, rows  # equal parameter counts


def test_bench_vit_row_for_a_mixer_config():
    """bench_vit times any registered image classifier's config: the Mixer's row has its
    parameter count (configs/mixer_fashion_mnist.py: 586,258) and a positive rate."""
    bench_vit = _bench_module("bench_vit")
    row = [c.strip() for c in bench_vit.bench("mixer_fashion_mnist", 2, "float32", 1,
                                              100.0).strip("|").split("|")]
    assert row[0] == "mixer_fashion_mnist" and row[2] == "0.59M" and row[3:6] == [
        "2", "28x28", "float32"], row
    assert float(row[7].replace(",", "")) > 0 and float(row[8]) > 0 and row[10].endswith("%")


def test_bench_init_row_of_a_small_program():
    """bench_init's row for a small init program: both builds compile and run (positive times),
    the program's parameter and array counts, and the trainer's choice for a small CPU model."""
    import flax.linen as nn

    bench_init = _bench_module("bench_init")
    model = nn.Dense(3)
    init = jax.jit(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 5))))
    mesh = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
    row = [c.strip() for c in bench_init._row("dense", jax.eval_shape(init), init.lower(), 18,
                                               mesh).strip("|").split("|")]
    assert row[:3] == ["dense", "0.00M", "2"] and row[-1] == "-O0", row
    assert float(row[3]) > 0 and float(row[5]) > 0, row  # compile times; runs may print 0.000
    assert float(row[4]) >= 0 and float(row[6]) >= 0 and row[7].endswith("x"), row


def test_gpu_suite_dry_run():
    """benchmarks/gpu_suite.sh --dry-run prints every command of the GPU suite and checks each
    against its script's own argparse parser and known configs, running none of them."""
    # PYTHON: this interpreter, not whatever `python` is on PATH (an unactivated venv).
    proc = subprocess.run(["bash", str(BENCH_DIR / "gpu_suite.sh"), "--dry-run"],
                          capture_output=True, text=True, timeout=120, cwd=BENCH_DIR.parent,
                          env={**os.environ, "PYTHON": sys.executable})
    out = proc.stdout
    assert proc.returncode == 0 and "every command checks out" in out, (
        out[-3000:] + proc.stderr[-3000:])
    checked = [line for line in out.splitlines() if line.startswith("ok: ")]
    scripts = [line.split("benchmarks/")[1].split()[0] for line in checked]
    assert scripts == ["bench_attention.py", "bench_attention.py", "bench_vit.py", "bench_lm.py",
                       "bench_unet.py"], out
    assert "--impls reference,xla,cudnn,pallas" in out and "--configs cifar10" in out
    assert "--configs vit_b16_imagenet,mixer_b16_imagenet --batch 256 --dtype bfloat16" in out
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


# ----------------------------------------------------------------- benchmarks/long_range.py
@pytest.fixture(scope="module")
def long_range():
    return _bench_module("long_range")


def test_adding_batch_matches_its_definition(long_range):
    """One marker in each half, values in [0, 1), target = the sum of the two marked values, and
    predicting 1 scores E[(U1 + U2 - 1)^2] = Var(U1 + U2) + (E[U1 + U2] - 1)^2 = 2/12 + 0 = 1/6."""
    import jax
    import numpy as np

    n, length = 4000, 51  # odd: halves [0, 25) and [25, 51)
    x, y = map(np.asarray, long_range.adding_batch(jax.random.PRNGKey(0), n, length))
    values, markers = x[..., 0], x[..., 1]
    assert x.shape == (n, length, 2) and y.shape == (n,)
    assert set(np.unique(markers)) == {0.0, 1.0}
    assert (markers[:, :25].sum(1) == 1).all() and (markers[:, 25:].sum(1) == 1).all()
    assert ((values >= 0) & (values < 1)).all()
    first, second = markers[:, :25].argmax(1), 25 + markers[:, 25:].argmax(1)
    rows = np.arange(n)
    np.testing.assert_allclose(y, values[rows, first] + values[rows, second], rtol=1e-6)
    # Both marker positions cover their halves (not pinned to one step).
    assert len(np.unique(first)) == 25 and len(np.unique(second)) == 26
    # (S - 1) is triangular on [-1, 1]: E[(S-1)^4] = 1/15, so sd of (S-1)^2 = sqrt(1/15 - 1/36).
    se = np.sqrt(1 / 15 - 1 / 36) / np.sqrt(n)
    assert abs(((y - 1) ** 2).mean() - 1 / 6) < 4 * se
    assert abs(long_range.BASELINE_MSE - 1 / 6) < 1e-12


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_input_grad_norm_at_t1_is_one_cell_step(long_range, cell):
    """At T = 1 the model is head(cell(0, x)): dL/dx = 2 (f(x) - y) w_head^T (d h / d x), with
    d h / d x the jax.jacobian of one step of flax's cell (recurrent.make_cell) by itself."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from attn_jax.models.recurrent import make_cell

    model = long_range.AddingModel(cell, hidden=5)
    params = long_range.init_params(model, jax.random.PRNGKey(1), 1)
    leaves, tree = jax.tree.flatten(params)  # nonzero biases too, so every term counts
    keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
    params = tree.unflatten([p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    x = jax.random.normal(jax.random.PRNGKey(3), (3, 1, 2))
    y = jnp.array([0.5, 1.0, 1.7])
    got = jax.jit(long_range.input_grad_norms, static_argnums=0)(model, params, x, y)

    step = make_cell(cell, 5, parent=None)
    cell_params = {"params": params["encoder"]["layer_0"]["cell"]}
    carry = step.initialize_carry(jax.random.PRNGKey(0), (2,))
    w, b = params["head"]["kernel"][:, 0], params["head"]["bias"][0]

    @jax.jit
    @jax.vmap
    def expected(xi, yi):  # one example: xi [2], yi []
        def hidden(v):
            return step.apply(cell_params, carry, v)[1]

        grad = 2 * (hidden(xi) @ w + b - yi) * (w @ jax.jacobian(hidden)(xi))
        return jnp.linalg.norm(grad)

    assert got.shape == (3, 1)
    np.testing.assert_allclose(np.asarray(got[:, 0]), expected(x[:, 0], y), rtol=1e-5)


def test_long_range_quick_tables(long_range, tmp_path, capsys):
    """long_range.py adding --quick, then gradnorm --quick --trained on the adding run's JSON:
    markdown tables with one row per cell (gradnorm: per cell at init, the LSTM with forget
    bias 1, and per trained cell), finite numbers, the PNGs written."""
    import json
    import math

    def run(task, *flags):
        png = tmp_path / f"{task}.png"
        long_range.main([task, "--quick", "--png", str(png), *flags])
        out = capsys.readouterr().out
        lines = [line for line in out.splitlines() if line.startswith("| ")]
        head = [c.strip() for c in lines[0].strip("|").split("|")]
        rows = _table(out)
        assert all(len(r) == len(head) for r in rows) and png.stat().st_size > 1000, out
        return head, rows, out

    head, rows, out = run("adding")
    assert head[:7] == ["cell", "T", "steps", "params", "test MSE", "baseline MSE", "solved"]
    assert [(r[0], r[1], r[2]) for r in rows] == [(c, "6", "20") for c in ("rnn", "lstm", "gru")]
    for r in rows:
        cells = dict(zip(head, r))
        assert math.isfinite(float(cells["test MSE"])) and 0 < float(cells["baseline MSE"]), r
        assert cells["solved"] in ("yes", "no") and float(cells[head[8]]) > 0, r
    # hidden 8, 2 inputs, head 8 + 1. tanh RNN: one [2, 8] + [8, 8] + bias; LSTM: four of
    # those; flax's GRU: three input kernels with biases, three recurrent kernels, of which
    # only the candidate's (hn) has a bias.
    rnn, lstm, gru = 2 * 8 + 8 * 8 + 8, 4 * (2 * 8 + 8 * 8 + 8), 3 * (2 * 8 + 8 * 8 + 8) + 8
    assert [int(r[3].replace(",", "")) for r in rows] == [rnn + 9, lstm + 9, gru + 9]
    saved = json.loads((tmp_path / "adding.json").read_text())
    assert [len(r["grad_norms"]) for r in saved["rows"]] == [6, 6, 6]

    head, rows, out = run("gradnorm", "--trained", str(tmp_path / "adding.json"))
    assert head[:6] == ["cell", "state", "T", "grad norm at x_T", "grad norm at x_1",
                        "ratio x_1/x_T"], head
    assert [(r[0], r[1].split(" (")[0]) for r in rows] == [
        ("rnn", "init"), ("lstm", "init"), ("gru", "init"), ("lstm", "init, forget bias 1"),
        ("rnn", "trained"), ("lstm", "trained"), ("gru", "trained")], out
    for r in rows:
        x_t, x_1, ratio = map(float, r[3:6])
        assert x_t > 0 and x_1 > 0 and math.isclose(ratio, x_1 / x_t, rel_tol=0.02), r


def test_profile_step_classifies_and_tables():
    """profile_step.py: the op classes of real op_names from the ViT and LM steps' HLO, and a
    --quick run's table (every kernel classified, the percentages summing to 100)."""
    prof = _bench_module("profile_step")
    step = "jit(train_step)/"
    vit = step + "jvp(ViT)/Transformer/encoderblock_0/"
    lm_bwd = step + "transpose(jvp(DecoderOnlyLM))/decoder/layer_1/"
    cases = {
        ("ynn_fusion.283", "dot", vit + "mlp/Dense_0/dot_general"): ("MLP matmuls", "fwd"),
        ("multiply_tanh_fusion.5", "multiply", vit + "mlp/tanh"): ("GELU and bias", "fwd"),
        ("dot.3", "dot", lm_bwd + "self_attention/query/dot_general"):
            ("q/k/v projections", "bwd"),
        ("dot.9", "dot", lm_bwd + "self_attention/out/dot_general"):
            ("output projection", "bwd"),
        ("dot.4", "dot", vit + "self_attention/vmap(BTNH,BSNH->BNTS)/dot_general"):
            ("attention einsums", "fwd"),
        ("reduce.7", "reduce", vit + "self_attention/vmap()/reduce_max"): ("softmax", "fwd"),
        ("fusion.2", "multiply", vit + "self_attention_norm/mul"): ("layer norm", "fwd"),
        ("wrapped_broadcast.5", "broadcast", vit + "mlp_norm/mul"):
            ("copies, transposes, broadcasts", "fwd"),
        ("multiply_add_fusion", "add", step + "add"): ("optimizer update", "update"),
        ("wrapped_reduce-window.1", "reduce-window", "reduce-window"):
            ("split reductions", "bwd"),
    }
    for (name, opcode, op_name), expected in cases.items():
        assert prof.classify(name, opcode, op_name) == expected, (name, op_name)
    hlo = """HloModule m

%fused_computation.1 (p: f32[4,8]) -> f32[1,8] {
  %p = f32[4,8]{1,0} parameter(0)
  ROOT %reduce-window.1 = f32[1,8]{1,0} reduce-window(%p, %c), window={size=4x1}
}

ENTRY %main (a: f32[4,8]) -> f32[1,8] {
  %a = f32[4,8]{1,0} parameter(0), metadata={op_name="state.params"}
  ROOT %wrapped_reduce-window.1 = f32[1,8]{1,0} fusion(%a), kind=kLoop, calls=%fused_computation.1
}
"""
    assert prof.entry_instructions(hlo) == {"a": ("parameter", "state.params"),
                                            "wrapped_reduce-window.1": ("reduce-window",
                                                                        "reduce-window")}
    table = prof.profile("vit", prof.QUICK["vit"], steps=1, warmup=1, top=3)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| category")
            and not line.startswith("| kernel")]
    categories = [r for r in rows if r[0] in prof.CATEGORIES]
    assert {"MLP matmuls", "layer norm", "optimizer update"} <= {r[0] for r in categories}, table
    assert abs(sum(float(r[6].rstrip("%")) for r in categories) - 100) < 0.5, table
    assert len(rows) - len(categories) == 3, table  # the top-3 kernel list
