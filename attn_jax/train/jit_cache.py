"""JAX's persistent compilation cache for train.py: compiled programs saved on disk and reused.

A run compiles its train step, every evaluator and the sampler before it does any work (on a
2-core CPU the quickstart spends most of its wall time compiling); a rerun, a resume or a second
run of the same config finds them here instead. JAX keys each entry on the program, the
devices and the jax/XLA versions, so a changed model or mesh simply compiles anew.

Where: `--jit_cache_dir`, else `$JAX_COMPILATION_CACHE_DIR`, else `$XDG_CACHE_HOME/attn_jax/jit`
(`~/.cache/attn_jax/jit`). `--nojit_cache` turns it off. Only programs that took at least JAX's
`jax_persistent_cache_min_compile_time_secs` (1 s) to compile are written, so the cache holds
the expensive ones. The directory
is trusted code (JAX's warning): keep it private to the user, as the default is.
"""

from __future__ import annotations

import os

def default_dir() -> str:
    env = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "attn_jax", "jit")


def configure(enabled: bool = True, path: str | None = None) -> str | None:
    """Turns the cache on at `path` (default `default_dir()`) or off; returns the directory in use
    (None when off). Call before the first compilation: JAX sets its cache up once per process."""
    import jax

    if not enabled:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    path = os.path.abspath(os.path.expanduser(path or default_dir()))
    os.makedirs(path, mode=0o700, exist_ok=True)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)
    return path
