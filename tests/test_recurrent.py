"""Tests of attn_jax.models.recurrent: flax's cells, the encoder over padded batches, the
alignment scores, and the recurrent seq2seq through `attn_jax.decoding`.

References: the papers' equations evaluated in NumPy (float64) with the model's own weights,
cell by cell (LSTM: Hochreiter & Schmidhuber 1997 with a forget gate, torch's gate order
i, f, g, o; GRU: Cho et al. 2014 as torch writes it, the reset gate inside W_hn h + b_hn; tanh
RNN), and a NumPy loop over each sequence's own valid steps for the multi-layer bidirectional
encoder (no padding in the loop at all, so any leak from padded steps shows). torch is not
installed in the test environment; the NumPy loop is the reference that always runs. The cached
decoder is checked against the teacher-forced pass, greedy against beam 1.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attn_jax import decoding
from attn_jax.models import build_model
from attn_jax.models.recurrent import Alignment, RecurrentEncoder, RNNSeq2Seq, make_cell

PAD, BOS, EOS = 0, 1, 2


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_params(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), nn.unbox(tree))


def np_cell(kind, p, carry, x):
    """One step of the cell's equations in NumPy -> (carry, output, gates dict)."""
    k = lambda n: p[n]["kernel"]  # noqa: E731  [in, out]
    b = lambda n: p[n]["bias"]  # noqa: E731
    if kind == "rnn":
        h = np.tanh(x @ k("i") + b("i") + carry @ k("h"))
        return h, h, {}
    if kind == "lstm":
        c, h = carry
        i = sigmoid(x @ k("ii") + h @ k("hi") + b("hi"))
        f = sigmoid(x @ k("if") + h @ k("hf") + b("hf"))
        g = np.tanh(x @ k("ig") + h @ k("hg") + b("hg"))
        o = sigmoid(x @ k("io") + h @ k("ho") + b("ho"))
        c = f * c + i * g
        h = o * np.tanh(c)
        return (c, h), h, dict(i=i, f=f, g=g, o=o)
    h = carry
    r = sigmoid(x @ k("ir") + b("ir") + h @ k("hr"))
    z = sigmoid(x @ k("iz") + b("iz") + h @ k("hz"))
    n = np.tanh(x @ k("in") + b("in") + r * (h @ k("hn") + b("hn")))
    h = (1.0 - z) * n + z * h
    return h, h, dict(r=r, z=z, n=n)


def _dense_outputs(fn):
    """Runs `fn()` recording every nn.Dense output by module name."""
    seen = {}

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
            seen[context.module.name] = np.asarray(out, np.float64)
        return out

    with nn.intercept_methods(record):
        result = fn()
    return result, seen


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_one_step_of_each_cell_equals_its_gate_equations(kind):
    """The model's cell (OptimizedLSTMCell for 'lstm') gives NumPy's new state; the gates
    themselves are checked on flax's unfused cell with the same parameter tree (LSTMCell /
    GRUCell: their Dense outputs are the gate pre-activations)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
    h = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    carry = (jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), h) if kind == "lstm" else h
    cell = make_cell(kind, 4)
    variables = cell.init(jax.random.key(1), carry, x)
    variables = jax.tree.map(lambda v: v + 0.1, variables)  # non-zero biases
    (new, out) = cell.apply(variables, carry, x)
    p = np_params(variables["params"])
    np_new, np_out, gates = np_cell(kind, p, jax.tree.map(np.asarray, carry), np.asarray(x))
    for a, e in zip(jax.tree.leaves(new), jax.tree.leaves(np_new)):
        np.testing.assert_allclose(a, e, atol=1e-5)
    np.testing.assert_allclose(out, np_out, atol=1e-5)
    if kind == "rnn":
        return

    plain = nn.LSTMCell(4) if kind == "lstm" else nn.GRUCell(4)
    (plain_new, _), pre = _dense_outputs(
        lambda: plain.apply({"params": nn.unbox(variables["params"])}, carry, x))
    for a, e in zip(jax.tree.leaves(plain_new), jax.tree.leaves(np_new)):
        np.testing.assert_allclose(a, e, atol=1e-5)
    if kind == "lstm":
        got = dict(i=sigmoid(pre["ii"] + pre["hi"]), f=sigmoid(pre["if"] + pre["hf"]),
                   g=np.tanh(pre["ig"] + pre["hg"]), o=sigmoid(pre["io"] + pre["ho"]))
    else:
        r = sigmoid(pre["ir"] + pre["hr"])
        got = dict(r=r, z=sigmoid(pre["iz"] + pre["hz"]), n=np.tanh(pre["in"] + r * pre["hn"]))
    for name, value in gates.items():
        np.testing.assert_allclose(got[name], value, atol=1e-5, err_msg=name)


LENGTHS = np.array([5, 2, 1, 3])


def np_encoder(kind, params, x, lengths, layers, bidirectional):
    """The stack run on each row's first `length` steps alone, in NumPy -> (outputs with zeros
    after each length, finals[layer][direction] per row)."""
    batch, time, _ = x.shape
    width = params["layer_0"]["forward_rnn" if bidirectional else "cell"]
    hidden = next(iter(jax.tree.leaves(width))).shape[-1]
    dirs = 2 if bidirectional else 1
    outputs = np.zeros((batch, time, hidden * dirs))
    finals = [[[None] * batch for _ in range(dirs)] for _ in range(layers)]

    def run(p, seq):
        carry = (np.zeros(hidden), np.zeros(hidden)) if kind == "lstm" else np.zeros(hidden)
        outs = []
        for step in seq:
            carry, out, _ = np_cell(kind, p, carry, step)
            outs.append(out)
        return carry, np.stack(outs)

    for row, n in enumerate(lengths):
        seq = x[row, :n].astype(np.float64)
        for i in range(layers):
            layer = params[f"layer_{i}"]
            if not bidirectional:
                finals[i][0][row], seq = run(layer["cell"], seq)
                continue
            finals[i][0][row], fwd = run(layer["forward_rnn"]["cell"], seq)
            finals[i][1][row], bwd = run(layer["backward_rnn"]["cell"], seq[::-1])
            seq = np.concatenate([fwd, bwd[::-1]], -1)
        outputs[row, :n] = seq
    return outputs, finals


# One compiled encoder per configuration, shared by the tests (modules are hashable).
encode = jax.jit(lambda encoder, variables, x, lengths: encoder.apply(variables, x, lengths),
                 static_argnums=0)


def _encoder(kind, bidirectional=True, layers=2):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(4, 5, 3)), jnp.float32)
    encoder = RecurrentEncoder(kind, hidden=4, num_layers=layers, bidirectional=bidirectional)
    shapes = nn.unbox(jax.eval_shape(encoder.init, jax.random.key(0), x, jnp.asarray(LENGTHS)))
    variables = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.5, s.shape), s.dtype), shapes)
    return encoder, variables, x


@pytest.mark.parametrize("kind, bidirectional", [("lstm", True), ("gru", True),
                                                 ("rnn", False)])
def test_encoder_equals_a_numpy_loop_over_each_sequence(kind, bidirectional):
    """2 layers; lengths 5, 2, 1, 3 of 5 steps. Outputs (zero after each length) and every
    layer's final state of each direction equal the NumPy loop over the valid steps alone (the
    backward direction reads the valid prefix reversed)."""
    encoder, variables, x = _encoder(kind, bidirectional)
    out, finals = encode(encoder, variables, x, jnp.asarray(LENGTHS))
    ref_out, ref_finals = np_encoder(kind, np_params(variables["params"]), np.asarray(x),
                                     LENGTHS, 2, bidirectional)
    np.testing.assert_allclose(out, ref_out, atol=1e-5)
    assert np.all(np.asarray(out)[1, 2:] == 0)  # padded outputs are exactly zero
    for i, layer in enumerate(finals):
        directions = layer if bidirectional else (layer,)
        for d, carry in enumerate(directions):
            for row in range(4):
                for a, e in zip(jax.tree.leaves(carry), jax.tree.leaves(ref_finals[i][d][row])):
                    np.testing.assert_allclose(np.asarray(a)[row], e, atol=1e-5,
                                               err_msg=f"layer {i} direction {d} row {row}")


def test_changing_a_padded_step_changes_nothing():
    """Noise written into every padded step (t >= length) of the input leaves outputs and
    final states of both directions bit-identical."""
    encoder, variables, x = _encoder("lstm")
    pad = np.arange(5)[None, :] >= LENGTHS[:, None]
    noisy = jnp.where(pad[..., None], 100.0 * jax.random.normal(jax.random.key(3), x.shape), x)
    clean_out, clean_finals = encode(encoder, variables, x, jnp.asarray(LENGTHS))
    noisy_out, noisy_finals = encode(encoder, variables, noisy, jnp.asarray(LENGTHS))
    np.testing.assert_array_equal(clean_out, noisy_out)
    for a, b in zip(jax.tree.leaves(clean_finals), jax.tree.leaves(noisy_finals)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["additive", "dot", "general"])
def test_each_attention_score_equals_its_formula(kind):
    """One step: scores e_j (additive v^T tanh(W s + U h_j); dot s^T h_j; general s^T W h_j),
    softmax over the unmasked j, context sum_j a_j h_j; masked keys get weight 0."""
    rng = np.random.default_rng(2)
    query = jnp.asarray(rng.normal(size=(2, 6)), jnp.float32)
    memory = jnp.asarray(rng.normal(size=(2, 4, 6)), jnp.float32)
    mask = jnp.asarray([[True, True, True, False], [True, True, True, True]])
    align = Alignment(kind, attention_dim=5, memory_features=6)

    def run(module, query, memory, mask):
        return module(query, module.keys(memory), memory, mask)

    variables = align.init(jax.random.key(0), query, memory, mask, method=run)
    context, weights = align.apply(variables, query, memory, mask, method=run)
    p = np_params(variables["params"]) if "params" in variables else {}
    q, h = np.asarray(query, np.float64), np.asarray(memory, np.float64)
    if kind == "additive":
        scores = (np.tanh((q @ p["query"]["kernel"])[:, None] + h @ p["key"]["kernel"])
                  @ p["v"])[..., 0]
    elif kind == "general":
        scores = np.einsum("bd,bsd->bs", q @ p["query"]["kernel"], h)
    else:
        scores = np.einsum("bd,bsd->bs", q, h)
    scores = np.where(np.asarray(mask), scores, -np.inf)
    expected = np.exp(scores - scores.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(weights, expected, atol=1e-6)
    np.testing.assert_allclose(context, np.einsum("bs,bsd->bd", expected, h), atol=1e-5)


SRC = jnp.array([[3, 4, 5, 6, EOS, PAD], [7, 8, 9, 10, 11, EOS], [5, EOS, PAD, PAD, PAD, PAD]])


def random_params(model, *args, std=0.3, seed=0):
    """N(0, std) parameters of the shapes `model.init` would make (no compile)."""
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), *args)["params"])
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, std, s.shape), s.dtype), shapes)


def tiny(**kw):
    return RNNSeq2Seq(**{**dict(vocab_size=13, embed_dim=6, hidden=8, pad_id=PAD, bos_id=BOS),
                         **kw})


@pytest.mark.parametrize("attention, cell", [("none", "lstm"), ("additive", "gru"),
                                             ("dot", "rnn"), ("general", "lstm")])
def test_cached_steps_equal_the_teacher_forced_pass(attention, cell):
    """`decode_step_fn` fed the shifted targets one token at a time (its cache: the carry)
    gives the logits of the full `nn.scan` pass at every position."""
    model = tiny(attention=attention, cell=cell, decoder_layers=2 if cell == "lstm" else 1)
    targets = jnp.array([[5, 6, 7, EOS], [8, EOS, PAD, PAD], [9, 9, 9, EOS]])
    params = random_params(model, SRC, targets)

    @jax.jit
    def run(params):
        full = model.apply({"params": params}, SRC, targets)
        fn, cache = decoding.encoder_decoder_step_fn(model, params, SRC, max_len=4)
        inputs = jnp.concatenate([jnp.full((3, 1), BOS), targets[:, :-1]], 1)
        stepped = []
        for t in range(targets.shape[1]):
            logits, cache = fn(inputs[:, t:t + 1], cache)
            stepped.append(logits)
        return full, jnp.stack(stepped, 1)

    full, stepped = run(params)
    np.testing.assert_allclose(stepped, full, atol=1e-5)


def _beam_one_reference(greedy, logp):
    """What beam search with 1 beam and alpha 0 must return, from the greedy tokens and the
    teacher-forced log-probabilities along them: each step keeps the 2 best candidates, so an
    EOS ranked first or second at step t finishes greedy[:t] + EOS; the best finished
    hypothesis wins (log p only falls), the greedy path itself when nothing finished."""
    best, out = -np.inf, list(greedy)
    total = 0.0
    for t, token in enumerate(greedy):
        ranked = np.argsort(-logp[t])[:2]
        if EOS in ranked and total + logp[t, EOS] > best:
            best = total + logp[t, EOS]
            out = list(greedy[:t]) + [EOS] + [PAD] * (len(greedy) - t - 1)
        if token == EOS:
            break
        total += logp[t, token]
    return out


def test_greedy_equals_beam_one_and_beam_scores_equal_the_full_pass():
    """Through attn_jax.decoding, with the teacher-forced pass as the reference: greedy tokens
    are the arg-max of the full pass over them; beam search with 1 beam returns the greedy
    output where it should (row 0: greedy ends at once) and otherwise the earlier EOS
    hypothesis that `_beam_one_reference` names (rows 1, 2: greedy never emits EOS, the
    Transformer's caveat); 3-beam scores = log p / lp(|Y|) recomputed by the full pass (wrong
    if the carry were not reordered with the beams)."""
    model = tiny(attention="additive", cell="lstm")
    params = random_params(model, SRC, SRC)
    # Peakier logits and a likelier EOS: one row ends at once, the others never (checked).
    params["logits"]["kernel"] = 3.0 * params["logits"]["kernel"]
    params["logits"]["bias"] = params["logits"]["bias"].at[EOS].add(1.0)
    max_len = 6

    @jax.jit
    def run(params):
        greedy = decoding.decode(model, params, SRC, max_len=max_len, eos_id=EOS)
        one, _ = decoding.translate(model, params, SRC, max_len=max_len, eos_id=EOS,
                                    beam_size=1, alpha=0.0)
        seqs, scores = decoding.translate(model, params, SRC, max_len=max_len, eos_id=EOS,
                                          beam_size=3, alpha=0.6)
        sources = jnp.concatenate([SRC, jnp.repeat(SRC, 3, axis=0)])
        logits = model.apply({"params": params}, sources,
                             jnp.concatenate([greedy, seqs.reshape(-1, max_len)]))
        return greedy, one[:, 0], seqs, scores, logits

    greedy, one, seqs, scores, logits = map(np.asarray, run(params))
    logits = logits.astype(np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    cands = np.concatenate([greedy, seqs.reshape(-1, max_len)])
    ends = np.array([list(s).index(EOS) + 1 if EOS in s else max_len for s in cands])
    for b in range(3):
        np.testing.assert_array_equal(logits[b].argmax(-1)[:ends[b]], greedy[b, :ends[b]])
        np.testing.assert_array_equal(one[b], _beam_one_reference(greedy[b], logp[b]))
    assert greedy[0, 0] == EOS and EOS not in greedy[1:]  # both cases are exercised
    np.testing.assert_array_equal(one[0], greedy[0])
    picked = np.take_along_axis(logp, cands[..., None], -1)[..., 0]
    total = np.array([picked[i, :n].sum() for i, n in enumerate(ends)])
    np.testing.assert_allclose(scores.reshape(-1), total[3:] / ((5 + ends[3:]) / 6) ** 0.6,
                               rtol=1e-4, atol=1e-5)


def test_attention_weights_are_distributions_over_the_real_source_tokens():
    """`attention_weights` (what attn_jax.viz.attention_maps draws): the teacher-forced
    logits, and per step a distribution over the source that is zero on its padding. An
    all-pad row under jit (its length unknown until run time) is defined: zero memory, zero
    weights, finite logits, and the other rows unchanged."""
    model = tiny(attention="additive", cell="gru")
    targets = jnp.array([[5, EOS], [6, EOS], [7, EOS]])
    params = random_params(model, SRC, targets)

    @jax.jit
    def run(params, source):
        logits, weights = model.attention_weights(params, source, targets)
        memory, _ = model.apply({"params": params}, source, method="encode")
        return logits, model.apply({"params": params}, source, targets), weights, memory

    logits, full, weights, _ = run(params, SRC)
    np.testing.assert_allclose(logits, full, atol=1e-6)
    w = np.asarray(weights["decoder/layer_0/cross_attention"])
    assert w.shape == (3, 1, 2, 6)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
    pad = np.broadcast_to(np.asarray(SRC == PAD)[:, None, :], (3, 2, 6))
    assert np.all(w[:, 0][pad] == 0)
    none = tiny(attention="none", cell="gru")
    assert jax.eval_shape(none.attention_weights, params, SRC, targets)[1] == {}

    empty, _, weights, memory = run(params, SRC.at[2].set(PAD))
    assert np.all(np.isfinite(empty)) and np.all(np.asarray(memory)[2] == 0)
    assert np.all(np.asarray(weights["decoder/layer_0/cross_attention"])[2] == 0)
    np.testing.assert_allclose(empty[:2], logits[:2], atol=1e-6)


def test_bad_inputs_are_clear_value_errors_before_compiling():
    """Raised at the call or at construction, before anything compiles. (The seq2seq model
    accepts all-pad source rows: the batcher's filler rows; see the attention-weights test.)"""
    encoder, variables, x = _encoder("gru", layers=1)
    with pytest.raises(ValueError, match="exceed the sequence length 5"):
        encoder.apply(variables, x, jnp.array([5, 6, 1, 1]))
    with pytest.raises(ValueError, match="at least one step"):
        encoder.apply(variables, x, jnp.array([5, 0, 1, 1]))
    with pytest.raises(ValueError, match=r"lengths must be int \[batch=4\]"):
        encoder.apply(variables, x, jnp.array([5, 2]))
    for fields, match in [(dict(decoder_bidirectional=True), "cannot read the tokens"),
                          (dict(cell="lstmm"), r"cell='lstmm' is unknown"),
                          (dict(attention="luong"), r"attention='luong' is unknown"),
                          (dict(attention="dot", encoder_hidden=3), "equally wide")]:
        with pytest.raises(ValueError, match=match):
            build_model("rnn_seq2seq", vocab_size=13, hidden=8, **fields)
    with pytest.raises(ValueError, match="cell='tanh' is unknown"):
        RecurrentEncoder("tanh")


def test_the_dates_configs_build_every_attention_and_cell():
    """configs/rnn_dates.py[:ATTENTION[,CELL]] builds its model (construction only: the
    field checks run, nothing compiles); a bad argument names the choices."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), os.pardir, "configs", "rnn_dates.py")
    spec = importlib.util.spec_from_file_location("rnn_dates", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for arg, attention, cell in [(None, "additive", "lstm"), ("none", "none", "lstm"),
                                 ("dot,gru", "dot", "gru"), ("general,rnn", "general", "rnn")]:
        fields = dict(module.get_config(arg).model)
        model = build_model(fields.pop("name"), vocab_size=259, **fields)
        assert (model.attention, model.cell, model.memory_features) == (attention, cell, 256)
    with pytest.raises(ValueError, match="ATTENTION"):
        module.get_config("luong")
