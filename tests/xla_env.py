"""XLA flags for the test processes (this interpreter, the xdist workers, every train.py or
sample.py subprocess). Imports nothing, so conftest.py can use it before jax is imported.

The suite is dominated by compiling tiny programs, not by running them: XLA's CPU backend
optimisations (LLVM's -O2 pipeline and its expensive passes) cost about a third of the suite's
CPU time and buy nothing a test looks at. The HLO passes (fusion, layout, sharding propagation)
still run, so the programs under test are the ones users run, only less tuned machine code.
Timings belong in benchmarks/, which never set FAST_COMPILE (they do use train.py's CPU
kernels, CPU_KERNELS below, as every test process does).
"""

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
# train.py's default CPU kernels (attn_jax/train/cpu_kernels.py, `CHOICES[DEFAULT]`; a test keeps
# the two equal), in every test process: a run in the test process and a train.py subprocess
# must compute with the same kernels to agree bit for bit.
CPU_KERNELS = "--xla_cpu_experimental_ynn_fusion_type="


def xla_flags(devices: int) -> str:
    """XLA_FLAGS for a test process with `devices` simulated CPU devices."""
    return f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE} {CPU_KERNELS}"
