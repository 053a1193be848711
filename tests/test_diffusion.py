"""Tests for attn_jax.diffusion: schedules, q / p, losses, bits/dim and the samplers.

References are independent: the paper's formulas re-evaluated in float64 NumPy, Bayes' rule and
KL / likelihood integrals evaluated numerically (dense grids, scipy.integrate.quad), Monte Carlo
moments, and oracle models that return the true noise.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.stats
from jax.sharding import NamedSharding, PartitionSpec as P

from attn_jax.diffusion import (
    GaussianDiffusion,
    cosine_beta_schedule,
    ddim_sample,
    ddim_timesteps,
    ddpm_sample,
    discretized_gaussian_log_likelihood,
    linear_beta_schedule,
    normal_kl,
)


def _ref_linear_quantities(T: int = 1000) -> dict[str, np.ndarray]:
    """Ho et al. 2020 Sec. 2 / 4 quantities, written out step by step in float64."""
    betas = np.array([1e-4 + (0.02 - 1e-4) * i / (T - 1) for i in range(T)])
    alphas = 1.0 - betas
    abar = np.empty(T)
    running = 1.0
    for i in range(T):
        running *= alphas[i]
        abar[i] = running
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    beta_tilde = (1.0 - abar_prev) / (1.0 - abar) * betas  # eq. 7
    return {
        "betas": betas,
        "alphas": alphas,
        "alphas_cumprod": abar,
        "alphas_cumprod_prev": abar_prev,
        "sqrt_alphas_cumprod": abar**0.5,
        "sqrt_one_minus_alphas_cumprod": (1.0 - abar) ** 0.5,
        "log_one_minus_alphas_cumprod": np.log1p(-abar),
        "sqrt_recip_alphas_cumprod": abar**-0.5,
        "sqrt_recipm1_alphas_cumprod": ((1.0 - abar) / abar) ** 0.5,
        "posterior_variance": beta_tilde,
        "posterior_log_variance_clipped": np.log(
            np.concatenate([[beta_tilde[1]], beta_tilde[1:]])
        ),
        "posterior_mean_coef1": np.sqrt(abar_prev) * betas / (1.0 - abar),  # eq. 7
        "posterior_mean_coef2": np.sqrt(alphas) * (1.0 - abar_prev) / (1.0 - abar),
        "log_betas": np.log(betas),
    }


def _true_eps_model(x0: np.ndarray, T: int = 1000):
    """An oracle eps-model: eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t), float64 abar."""
    abar = jnp.asarray(_ref_linear_quantities(T)["alphas_cumprod"], jnp.float32)
    x0 = jnp.asarray(x0, jnp.float32)

    def model_fn(x_t, t):
        a = abar[t].reshape((-1,) + (1,) * (x_t.ndim - 1))
        return (x_t - jnp.sqrt(a) * x0) / jnp.sqrt(1.0 - a)

    return model_fn


_jit_posterior = jax.jit(GaussianDiffusion.q_posterior_mean_variance)


def _toy_model(x_t, t):
    """A fixed non-linear stand-in for a network: output depends on x_t and t."""
    scale = (t.astype(jnp.float32) / 1000.0).reshape((-1,) + (1,) * (x_t.ndim - 1))
    return jnp.tanh(x_t) * (0.5 + scale) + 0.1 * jnp.sin(3.0 * x_t)


def test_linear_schedule_and_derived_quantities_match_float64_formulas():
    """Every stored quantity vs the paper's formulas re-derived in float64 NumPy (loops)."""
    diff = GaussianDiffusion.create(schedule="linear", num_timesteps=1000)
    ref = _ref_linear_quantities(1000)
    assert diff.num_timesteps == 1000
    for name, want in ref.items():
        got = getattr(diff, name)
        assert got.dtype == jnp.float32, name
        assert got.shape == (1000,), name
        np.testing.assert_allclose(np.asarray(got), want, rtol=2e-6, atol=0, err_msg=name)
    np.testing.assert_allclose(linear_beta_schedule(1000), ref["betas"], rtol=1e-14)


def test_cosine_schedule_follows_alpha_bar_function():
    """Nichol & Dhariwal eq. 17: abar_t = f(t/T) / f(0) wherever beta is not clipped at 0.999."""
    T, s = 1000, 0.008
    betas = cosine_beta_schedule(T)
    f = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    want_abar = f(np.arange(1, T + 1) / T) / f(0.0)
    abar = np.cumprod(1.0 - betas)
    clipped = betas >= 0.999
    assert clipped[-1] and clipped.sum() == 1  # only the last step hits the cap
    np.testing.assert_allclose(abar[:-1], want_abar[:-1], rtol=1e-9)
    assert np.all(np.diff(betas) > 0)
    diff = GaussianDiffusion.create(schedule="cosine")
    np.testing.assert_allclose(np.asarray(diff.alphas_cumprod), abar, rtol=2e-6, atol=1e-12)


def test_q_sample_moments_monte_carlo():
    """q(x_t | x_0) has mean sqrt(abar_t) x_0 and variance 1 - abar_t (eq. 4), by Monte Carlo."""
    diff = GaussianDiffusion.create()
    abar = _ref_linear_quantities()["alphas_cumprod"]
    n = 200_000
    x0_vals = np.array([-0.9, 0.1, 0.7], np.float32)
    x0 = np.broadcast_to(x0_vals, (n, 3))
    rng = np.random.default_rng(0)
    sample = jax.jit(lambda x0, t, eps: (diff.q_sample(x0, t, eps), diff.q_mean_variance(x0, t)))
    for t_val in (0, 100, 500, 999):
        noise = rng.standard_normal((n, 3), dtype=np.float32)
        x_t, q = sample(x0, np.full((n,), t_val, np.int32), noise)
        x_t = np.asarray(x_t, np.float64)
        want_mean, want_var = np.sqrt(abar[t_val]) * x0_vals, 1.0 - abar[t_val]
        np.testing.assert_allclose(
            x_t.mean(0), want_mean, atol=5 * math.sqrt(want_var / n), err_msg=f"t={t_val}"
        )
        np.testing.assert_allclose(
            x_t.var(0), want_var, rtol=5 * math.sqrt(2.0 / n), err_msg=f"t={t_val}"
        )
        np.testing.assert_allclose(q.mean[0], want_mean, rtol=1e-6)
        np.testing.assert_allclose(q.variance[0], want_var, rtol=1e-6)
        np.testing.assert_allclose(q.log_variance[0], np.log(want_var), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("t_val", [1, 10, 300, 999])
def test_posterior_matches_bayes_rule_on_grid(t_val):
    """q(x_{t-1} | x_t, x_0) vs Bayes' rule on a dense 1-D grid:
    p(x_t | x_{t-1}) p(x_{t-1} | x_0), normalised, then its mean and variance."""
    ref = _ref_linear_quantities()
    diff = GaussianDiffusion.create()
    x0, x_t = 0.4, -0.3
    beta, abar_prev = ref["betas"][t_val], ref["alphas_cumprod"][t_val - 1]
    prior_mean, prior_sd = math.sqrt(abar_prev) * x0, math.sqrt(1.0 - abar_prev)
    # Cover both factors: the prior N(prior_mean, prior_sd) and the likelihood, which as a
    # function of x_{t-1} peaks at x_t / sqrt(alpha_t) with width sqrt(beta_t / alpha_t).
    lik_mean, lik_sd = x_t / math.sqrt(1.0 - beta), math.sqrt(beta / (1.0 - beta))
    width = 12 * max(prior_sd, lik_sd)
    lo, hi = min(prior_mean, lik_mean) - width, max(prior_mean, lik_mean) + width
    grid = np.linspace(lo, hi, 400_001)
    log_w = scipy.stats.norm.logpdf(x_t, math.sqrt(1.0 - beta) * grid, math.sqrt(beta))
    log_w += scipy.stats.norm.logpdf(grid, prior_mean, prior_sd)
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    want_mean = (w * grid).sum()
    want_var = (w * (grid - want_mean) ** 2).sum()

    post = _jit_posterior(diff, np.array([[x0]]), np.array([[x_t]]), np.array([t_val]))
    sd = math.sqrt(want_var)
    np.testing.assert_allclose(float(post.mean[0, 0]), want_mean, atol=1e-4 * sd + 1e-6)
    np.testing.assert_allclose(float(post.variance[0, 0]), want_var, rtol=1e-4)
    np.testing.assert_allclose(float(post.log_variance[0, 0]), math.log(want_var), rtol=1e-4)


def test_posterior_at_first_step_is_x0():
    """At t = 0 (paper t = 1) abar_prev = 1: the posterior is x_0 (coef1 = 1, coef2 = 0)."""
    diff = GaussianDiffusion.create()
    x0, x_t = np.array([[0.25, -0.5]]), np.array([[1.0, 2.0]])
    post = _jit_posterior(diff, x0, x_t, np.array([0]))
    np.testing.assert_allclose(post.mean, x0, rtol=1e-6)
    np.testing.assert_allclose(post.variance, 0.0, atol=1e-12)


@pytest.mark.parametrize(
    "m1,v1,m2,v2", [(0.0, 1.0, 0.0, 1.0), (0.3, 0.5, -0.2, 2.0), (1.5, 0.01, 1.4, 0.03)]
)
def test_normal_kl_matches_quadrature(m1, v1, m2, v2):
    """KL(N1 || N2) vs scipy.integrate.quad of p1 (log p1 - log p2)."""
    p1, p2 = scipy.stats.norm(m1, math.sqrt(v1)), scipy.stats.norm(m2, math.sqrt(v2))
    lo, hi = m1 - 30 * math.sqrt(v1), m1 + 30 * math.sqrt(v1)
    want, _ = scipy.integrate.quad(
        lambda x: p1.pdf(x) * (p1.logpdf(x) - p2.logpdf(x)), lo, hi, epsabs=1e-13, limit=200
    )
    got = jax.jit(normal_kl)(m1, math.log(v1), m2, math.log(v2))
    np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "x,mean,sd",
    [
        (-1.0, -0.98, 0.05),  # left edge bin: (-inf, -1 + 1/255]
        (1.0, 0.95, 0.02),  # right edge bin: [1 - 1/255, inf)
        (1.0, -0.5, 0.3),  # right edge bin, far from the mean
        (0.2, 0.2, 0.007),  # interior bin at the mean, narrow Gaussian (as at t = 0)
        (2 / 255 - 1 + 10 / 255, 0.1, 0.5),  # interior, wide Gaussian
        (0.6, 0.0, 0.05),  # interior, 12 sd into the right tail
        (-0.6, 0.1, 0.04),  # interior, 17 sd into the left tail
    ],
)
def test_discretized_gaussian_log_likelihood_matches_quadrature(x, mean, sd):
    """log of the Gaussian mass of x's bin (edge bins to +-inf), by scipy.integrate.quad."""
    pdf = scipy.stats.norm(mean, sd).pdf
    lo = -np.inf if x < -0.999 else x - 1 / 255
    hi = np.inf if x > 0.999 else x + 1 / 255
    want, _ = scipy.integrate.quad(pdf, lo, hi, epsabs=0.0, epsrel=1e-12, limit=200)
    got = jax.jit(discretized_gaussian_log_likelihood)(
        np.float32(x), np.float32(mean), np.float32(math.log(sd))
    )
    np.testing.assert_allclose(float(got), math.log(want), rtol=2e-4, atol=2e-5)


def test_x_T_is_close_to_standard_normal():
    """abar_T is tiny for T = 1000, so x_T ~ N(0, I): sample moments, and L_T ~ 0 bits/dim."""
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (64, 16, 16, 3)).astype(np.float32)
    noise = rng.standard_normal(x0.shape, dtype=np.float32)
    t = np.full((64,), 999, np.int32)
    x_T_and_prior = jax.jit(lambda d: (d.q_sample(x0, t, noise), d.prior_bpd(x0)))
    for schedule in ("linear", "cosine"):
        diff = GaussianDiffusion.create(schedule=schedule)
        assert float(diff.alphas_cumprod[-1]) < 5e-5
        x_T, prior_bpd = x_T_and_prior(diff)
        x_T = np.asarray(x_T, np.float64)
        n = x_T.size
        assert abs(x_T.mean()) < 5 / math.sqrt(n)
        assert abs(x_T.std() - 1.0) < 5 * math.sqrt(0.5 / n)
        assert abs(np.corrcoef(np.ravel(x0), np.ravel(x_T))[0, 1]) < 0.02
        assert float(np.max(prior_bpd)) < 1e-4


def test_true_noise_model_recovers_x0():
    """An oracle eps-model: one reverse step's pred_xstart is x_0 at every t tried, and full DDIM
    (eta = 0, 50 steps) and DDPM (1000 steps) runs land on x_0."""
    diff = GaussianDiffusion.create()
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (2, 4, 4, 3)).astype(np.float32)
    model_fn = _true_eps_model(x0)

    @jax.jit
    def one_step(t, noise):
        x_t = diff.q_sample(jnp.asarray(x0), t, noise)
        return diff.p_mean_variance(model_fn(x_t, t), x_t, t, clip_denoised=False)

    for t_val in (0, 1, 250, 999):
        out = one_step(np.full((2,), t_val, np.int32), rng.standard_normal(x0.shape, np.float32))
        atol = 1e-5 if t_val < 900 else 2e-2  # near T, x_0 is 1/sqrt(abar) ~ 150x x_t's error
        np.testing.assert_allclose(out.pred_xstart, x0, atol=atol, err_msg=f"t={t_val}")
    ddim = jax.jit(lambda rng: ddim_sample(diff, model_fn, rng, x0.shape, num_steps=50))
    np.testing.assert_allclose(ddim(jax.random.key(3)), x0, atol=1e-5)
    ddpm = jax.jit(lambda rng: ddpm_sample(diff, model_fn, rng, x0.shape))
    np.testing.assert_allclose(ddpm(jax.random.key(4)), x0, atol=1e-5)


def test_sampling_is_deterministic_given_seed():
    """Same seed -> identical samples (ddpm, ddim with eta = 0.5); other seeds differ."""
    diff = GaussianDiffusion.create(betas=linear_beta_schedule(100, 1e-3, 0.2))
    shape = (3, 4, 4, 2)
    samplers = {
        "ddpm": lambda r: ddpm_sample(diff, _toy_model, r, shape),
        "ddim.5": lambda r: ddim_sample(diff, _toy_model, r, shape, num_steps=10, eta=0.5),
    }
    for name, fn in samplers.items():
        fn = jax.jit(fn)
        a, b, c = fn(jax.random.key(0)), fn(jax.random.key(0)), fn(jax.random.key(1))
        assert a.shape == shape and a.dtype == jnp.float32
        np.testing.assert_array_equal(a, b, err_msg=name)
        assert float(jnp.abs(a - c).max()) > 0.1, name
        assert float(jnp.abs(a).max()) <= 1.0, name  # clip_output


def test_ddim_eta1_on_every_step_equals_ddpm_fixed_small():
    """Song et al. 2021 Sec. 4.1: DDIM with eta = 1 and all steps is ancestral DDPM with
    sigma_t^2 = beta-tilde_t; both samplers draw the same noise, so the samples agree."""
    diff = GaussianDiffusion.create(
        betas=linear_beta_schedule(100, 1e-3, 0.2), model_var_type="fixed_small"
    )
    shape = (2, 4, 4, 3)
    ddpm = jax.jit(lambda r: ddpm_sample(diff, _toy_model, r, shape, clip_output=False))
    ddim = jax.jit(
        lambda r: ddim_sample(diff, _toy_model, r, shape, num_steps=100, eta=1.0, clip_output=False)
    )
    np.testing.assert_allclose(ddim(jax.random.key(7)), ddpm(jax.random.key(7)), atol=2e-5)


def test_parameterisations_agree_given_true_targets():
    """eps-, x0- and v-models fed their true targets give the same pred_xstart, mean and VLB
    term, and zero simple loss."""
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (4, 4, 4, 3))
    noise = rng.standard_normal(x0.shape)
    t = np.array([0, 5, 400, 900], np.int32)
    a = _ref_linear_quantities()["alphas_cumprod"][t].reshape(-1, 1, 1, 1)
    # float64 NumPy targets, independent of the library's helpers
    targets = {"epsilon": noise, "x0": x0, "v": np.sqrt(a) * noise - np.sqrt(1 - a) * x0}
    x0, noise = x0.astype(np.float32), noise.astype(np.float32)

    @jax.jit
    def evaluate(diff, out):
        x_t = diff.q_sample(x0, t, noise)
        pmv = diff.p_mean_variance(out, x_t, t, clip_denoised=False)
        vb, _ = diff.vb_terms_bpd(out, x0, x_t, t)
        loss, _ = diff.training_losses(lambda x, tt: out, x0, t, noise)
        return pmv, vb, loss, diff.model_target(x0, noise, t)

    results = {}
    for kind, target in targets.items():
        pmv, vb, loss, model_target = evaluate(
            GaussianDiffusion.create(model_mean_type=kind), target.astype(np.float32)
        )
        np.testing.assert_allclose(loss, 0.0, atol=1e-10)
        np.testing.assert_allclose(model_target, target, atol=1e-6)
        results[kind] = (pmv.pred_xstart, pmv.mean, vb)
    for kind in ("x0", "v"):
        for got, want in zip(results[kind], results["epsilon"]):
            np.testing.assert_allclose(got, want, atol=3e-3, rtol=1e-4, err_msg=kind)
    np.testing.assert_allclose(results["x0"][0], x0, atol=1e-6)


def test_model_variances():
    """fixed_small = beta-tilde, fixed_large = beta (beta-tilde_2 at t = 0), learned_range
    interpolates the logs: out = -1 -> log beta-tilde (clipped), out = +1 -> log beta."""
    ref = _ref_linear_quantities()
    t = jnp.array([0, 1, 500, 999], jnp.int32)
    ti = np.asarray(t)
    x_t = jnp.zeros((4, 2, 2, 1))
    cases = {
        "fixed_small": (jnp.zeros_like(x_t), ref["posterior_variance"][ti]),
        "fixed_large": (
            jnp.zeros_like(x_t),
            np.concatenate([[ref["posterior_variance"][1]], ref["betas"][1:]])[ti],
        ),
    }
    for frac, want in (
        (-1.0, np.exp(ref["posterior_log_variance_clipped"][ti])),
        (1.0, ref["betas"][ti]),
        (0.0, np.sqrt(np.exp(ref["posterior_log_variance_clipped"][ti]) * ref["betas"][ti])),
    ):
        out = jnp.concatenate([jnp.zeros_like(x_t), jnp.full_like(x_t, frac)], -1)
        cases[f"learned_range{frac}"] = (out, want)
    for name, (out, want) in cases.items():
        diff = GaussianDiffusion.create(
            model_var_type=name.rstrip("-.0123456789"),
            loss_type="hybrid" if name.startswith("learned") else "mse",
        )
        pmv = jax.jit(diff.p_mean_variance)(out, x_t, t)
        np.testing.assert_allclose(pmv.variance[:, 0, 0, 0], want, rtol=1e-5, err_msg=name)
        # beta-tilde_1 = 0: fixed_small's log-variance at t = 0 is clipped to log beta-tilde_2.
        small = name == "fixed_small"
        want_log = ref["posterior_log_variance_clipped"][ti] if small else np.log(want)
        np.testing.assert_allclose(pmv.log_variance[:, 0, 0, 0], want_log, rtol=1e-5, err_msg=name)


def test_vb_terms_of_true_noise_model():
    """With the oracle model the reverse mean is the true posterior mean, so L_{t-1} is the KL
    between variances only: 0 for fixed_small, and 0.5 (r - 1 - log r), r = beta-tilde / beta,
    for fixed_large (closed form, float64)."""
    ref = _ref_linear_quantities()
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (3, 4, 4, 3)).astype(np.float32)
    noise = rng.standard_normal(x0.shape, np.float32)
    t = np.array([1, 50, 700], np.int32)

    @jax.jit
    def vb_terms(diff):
        x_t = diff.q_sample(x0, t, noise)
        return diff.vb_terms_bpd(_true_eps_model(x0)(x_t, t), x0, x_t, t)[0]

    vb = vb_terms(GaussianDiffusion.create(model_var_type="fixed_small"))
    np.testing.assert_allclose(vb, 0.0, atol=1e-5)
    vb = vb_terms(GaussianDiffusion.create(model_var_type="fixed_large"))
    r = ref["posterior_variance"][t] / ref["betas"][t]
    np.testing.assert_allclose(vb, 0.5 * (r - 1 - np.log(r)) / math.log(2), rtol=1e-3, atol=1e-6)


def test_hybrid_loss_trains_variance_only_through_vlb():
    """Nichol & Dhariwal eq. 16: hybrid = mse + lambda T L_t with the mean stop-gradiented in
    L_t; so d(hybrid)/d(mean params) = d(mse)/d(mean params), and the variance gets a gradient."""
    diff = GaussianDiffusion.create(model_var_type="learned_range", loss_type="hybrid")
    kl_diff = GaussianDiffusion.create(model_var_type="learned_range", loss_type="kl")
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (4, 4, 4, 3)).astype(np.float32)
    noise = rng.standard_normal(x0.shape, np.float32)
    t = np.array([0, 3, 200, 800], np.int32)

    def loss(params, d, term):
        model_fn = lambda x, tt: jnp.concatenate(  # noqa: E731
            [params["a"] * x, jnp.broadcast_to(params["b"], x.shape)], -1
        )
        loss, terms = d.training_losses(model_fn, x0, t, noise)
        return terms[term].mean(), (loss, terms)

    @jax.jit
    def losses_and_grads(params, d):
        (_, (loss_, terms)), grad = jax.value_and_grad(loss, has_aux=True)(params, d, "loss")
        grad_mse = jax.grad(lambda p: loss(p, d, "mse")[0])(params) if "mse" in terms else None
        return loss_, terms, grad, grad_mse

    params = {"a": np.float32(0.7), "b": np.float32(0.2)}
    hybrid, terms, g_h, g_mse = losses_and_grads(params, diff)
    np.testing.assert_allclose(hybrid, terms["mse"] + 0.001 * 1000 * terms["vb"], rtol=1e-6)
    kl_loss, kl_terms, g_kl, _ = losses_and_grads(params, kl_diff)
    np.testing.assert_allclose(kl_loss, 1000 * kl_terms["vb"], rtol=1e-6)
    np.testing.assert_allclose(kl_terms["vb"], terms["vb"], rtol=1e-6)
    np.testing.assert_allclose(g_h["a"], g_mse["a"], rtol=1e-6)
    assert abs(float(g_kl["a"])) > 1e-3  # without the stop-gradient the mean does get one
    assert abs(float(g_h["b"])) > 1e-4 and float(g_mse["b"]) == 0.0


def test_bits_per_dim_of_true_noise_model():
    """Full-VLB bits/dim (one lax.scan over T) with the oracle model and fixed_small variances:
    every KL term vanishes, so total = L_T + L_0 where L_0 is the discretised Gaussian NLL of
    x_0 under N(x_0, beta-tilde_2), evaluated with scipy.stats.norm.cdf."""
    ref = _ref_linear_quantities()
    diff = GaussianDiffusion.create(model_var_type="fixed_small")
    levels = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3))
    levels[0, 0, 0] = [0, 255, 128]  # both edge bins and an interior one, for sure
    x0 = levels / 127.5 - 1.0
    out = jax.jit(lambda x, r: diff.bits_per_dim(_true_eps_model(x), x, r))(
        x0.astype(np.float32), jax.random.key(1)
    )
    assert out["vb"].shape == (2, 1000) and out["total_bpd"].shape == (2,)
    np.testing.assert_allclose(out["vb"][:, 1:], 0.0, atol=1e-4)
    sd = math.sqrt(ref["posterior_variance"][1])
    w = (1 / 255) / sd
    cdf = scipy.stats.norm.cdf
    p = np.where(np.abs(x0) > 0.999, cdf(w), cdf(w) - cdf(-w))  # edge bins: one tail to inf
    l0 = (-np.log(p)).mean(axis=(1, 2, 3)) / math.log(2)
    abar_T = ref["alphas_cumprod"][-1]
    prior = (0.5 * (-1 - np.log1p(-abar_T) + (1 - abar_T) + abar_T * x0**2)).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(out["vb"][:, 0], l0, rtol=1e-4)
    np.testing.assert_allclose(out["prior_bpd"], prior / math.log(2), rtol=1e-2, atol=1e-8)
    np.testing.assert_allclose(out["total_bpd"], l0 + prior / math.log(2), rtol=1e-3)
    np.testing.assert_allclose(out["xstart_mse"], 0.0, atol=1e-3)


def test_sampling_with_batch_sharded_over_devices_matches_single_device():
    """The samplers are pure jittable functions: with the batch sharded over 8 devices through
    jit out_shardings, DDIM (eta > 0: fresh noise every step, like DDPM) returns the
    single-device samples."""
    if jax.device_count() < 8:
        pytest.fail("needs the 8 simulated CPU devices set up by tests/conftest.py")
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    diff = GaussianDiffusion.create(betas=linear_beta_schedule(50, 1e-3, 0.2))
    shape = (8, 4, 4, 3)

    def model_fn_of(w):
        return lambda x, t: _toy_model(x, t) * w

    def fn(w, rng):
        return ddim_sample(diff, model_fn_of(w), rng, shape, num_steps=10, eta=0.3)

    w = np.float32(0.9)
    single = jax.jit(fn)(w, jax.random.key(0))
    sharded = jax.jit(fn, out_shardings=NamedSharding(mesh, P("data")))(w, jax.random.key(0))
    assert len(sharded.sharding.device_set) == 8
    np.testing.assert_allclose(sharded, single, atol=1e-5)


def test_ddim_timesteps():
    """Evenly spaced, distinct, from 0 to T - 1."""
    steps = ddim_timesteps(1000, 50)
    assert steps[0] == 0 and steps[-1] == 999 and len(np.unique(steps)) == 50
    np.testing.assert_array_equal(ddim_timesteps(10, 10), np.arange(10))
    np.testing.assert_array_equal(ddim_timesteps(10, 1), [9])


def test_bad_inputs_raise_value_error():
    diff = GaussianDiffusion.create()
    x = jnp.zeros((2, 4, 4, 3))
    with pytest.raises(ValueError, match="model_mean_type"):
        GaussianDiffusion.create(model_mean_type="score")
    with pytest.raises(ValueError, match="no training signal"):
        GaussianDiffusion.create(model_var_type="learned_range", loss_type="mse")
    with pytest.raises(ValueError, match="betas must lie"):
        GaussianDiffusion.create(betas=np.array([0.1, 1.5]))
    with pytest.raises(ValueError, match="unknown beta schedule"):
        GaussianDiffusion.create(schedule="quadratic")
    with pytest.raises(ValueError, match=r"t must have shape \[batch\]"):
        diff.q_sample(x, jnp.array([1, 2, 3]), x)
    with pytest.raises(ValueError, match="integer timestep"):
        diff.q_sample(x, jnp.array([1.0, 2.0]), x)
    learned = GaussianDiffusion.create(model_var_type="learned_range", loss_type="hybrid")
    with pytest.raises(ValueError, match="2x channels"):
        learned.p_mean_variance(x, x, jnp.array([1, 2]))
    with pytest.raises(ValueError, match="num_steps"):
        ddim_sample(diff, _toy_model, jax.random.key(0), x.shape, num_steps=1001)
    with pytest.raises(ValueError, match="x_T shape"):
        ddpm_sample(diff, _toy_model, jax.random.key(0), x.shape, x_T=jnp.zeros((1, 4, 4, 3)))
