"""Test setup: 8 simulated CPU devices for the sharding tests, compiled without XLA's backend
optimisations (tests/xla_env.py says why).

XLA reads the flag once, when the backend starts, so it must be set before anything imports jax.
Plain jitted code still runs on device 0; only tests that build a mesh use the others.
"""

import os

import pytest

from xla_env import xla_flags  # noqa: E402  (imports nothing: jax is not loaded yet)

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_flags(8)).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent compilation cache for the whole run, shared by the xdist workers and every
# train.py subprocess (they inherit the environment): the trainer re-jits its closures on each
# call, and many tests compile the same programs (a straight run and its resumed twin, the same
# tiny config on the same mesh). A fresh directory per run, so nothing carries over between runs.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="attn_jax_test_jit_")
    os.environ["ATTN_JAX_TEST_OWNS_JIT_CACHE"] = str(os.getpid())


@pytest.fixture(scope="session")
def jax_cache() -> str:
    """The run's persistent compilation cache (above), for tests that pass it on explicitly."""
    return os.environ["JAX_COMPILATION_CACHE_DIR"]


def pytest_unconfigure(config):
    if os.environ.get("ATTN_JAX_TEST_OWNS_JIT_CACHE") == str(os.getpid()):
        import shutil

        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
