#!/usr/bin/env bash
# The GPU benchmark suite: on a machine with an NVIDIA GPU, installs the `cuda` extra (unless JAX
# already sees the GPU) and runs the four benchmark scripts at accelerator sizes, printing the
# markdown tables for BENCHMARKS.md (MFU against the device's peak: benchmarks/_common.py's PEAKS
# knows H100 and H200; set PEAK_TFLOPS for another GPU). Under 10 minutes on one H100/H200.
#
#   bash benchmarks/gpu_suite.sh                 # on the GPU machine
#   bash benchmarks/gpu_suite.sh --out DIR       # also writes each table to DIR/<name>.md
#   bash benchmarks/gpu_suite.sh --dry-run       # anywhere: prints every command and checks it
#                                                # against its script's own argparse parser and
#                                                # known configs (check_commands.py), runs nothing
#   bash benchmarks/gpu_suite.sh --cpu-run       # anywhere, on the CPU: every command with its
#                                                # exact flags and tiny sizes appended (argparse
#                                                # keeps the last value): each code path, ~1 min
#
#   attention  bench_attention.py: reference, xla, cudnn, pallas; bf16, B 8, 16 heads of 64,
#              lengths 512-4096, plain and causal
#   vit_b16    bench_vit.py: ViT-B/16 and Mixer-B/16 (configs/vit_b16_imagenet.py,
#              configs/mixer_b16_imagenet.py) at 224x224, bf16, batch 256
#   gpt2_small bench_lm.py: GPT-2 small, bf16, batch 16 x 1024 tokens, no dropout (the fused
#              attention path), and KV-cached decoding of 256 tokens for 8 rows
#   unet       bench_unet.py: Ho et al.'s CIFAR-10 U-Net (35.7M), bf16, 20 train steps at batch
#              128, 200 DDPM / 10 DDIM sampling steps at batch 256 (rates scaled to 1000 / 50)
set -uo pipefail
cd "$(dirname "$0")/.."

mode=gpu
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) mode=dry ;;
    --cpu-run) mode=cpu ;;
    --out) out="$2"; shift ;;
    -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $1 (use --dry-run, --cpu-run, --out DIR or --help)" >&2; exit 2 ;;
  esac
  shift
done
py=${PYTHON:-python}
peak=()
[ -n "${PEAK_TFLOPS:-}" ] && peak=(--peak-tflops "$PEAK_TFLOPS")
[ -n "$out" ] && mkdir -p "$out"

if [ "$mode" = dry ]; then
  echo "gpu_suite: dry run: the commands, checked against each script's parser"
elif [ "$mode" = cpu ]; then
  export JAX_PLATFORMS=cpu
  peak=(--peak-tflops 1)  # exercises the MFU column
  echo "gpu_suite: CPU run, tiny sizes"
else
  if ! command -v nvidia-smi >/dev/null; then
    echo "error: no nvidia-smi: this suite needs an NVIDIA GPU (--dry-run checks it on a CPU)" >&2
    exit 2
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  if ! "$py" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
    echo "gpu_suite: installing the cuda extra (pip install -e '.[cuda]')"
    "$py" -m pip install -q -e '.[cuda]' || { echo "error: pip install -e '.[cuda]' failed" >&2; exit 2; }
  fi
  "$py" - "${PEAK_TFLOPS:-}" <<'EOF' || exit 2
import sys
import jax
sys.path.insert(0, "benchmarks")
from _common import PEAKS
if jax.default_backend() != "gpu":
    sys.exit(f"error: JAX sees no GPU after the install: {jax.devices()}")
kind = jax.devices()[0].device_kind
known = PEAKS.get((kind, "bfloat16"))
print(f"jax {jax.__version__}: {jax.device_count()} x {kind}; bf16 peak "
      + (f"{known} TFLOP/s (_common.PEAKS)" if known else
         (f"{sys.argv[1]} TFLOP/s (PEAK_TFLOPS)" if sys.argv[1] else
          "unknown: MFU will read n/a (set PEAK_TFLOPS)")))
EOF
fi

failed=()
commands=()
# run NAME SCRIPT FLAGS... --tiny TINY_FLAGS...: the CPU run appends TINY_FLAGS to FLAGS.
run() {
  local name=$1 script=$2
  shift 2
  local flags=() tiny=() seen=0
  for a in "$@"; do
    if [ "$a" = --tiny ]; then seen=1; elif [ "$seen" = 1 ]; then tiny+=("$a"); else flags+=("$a"); fi
  done
  local argv=("$py" "benchmarks/$script" "${flags[@]}" "${peak[@]}")
  [ "$mode" = cpu ] && argv+=("${tiny[@]}")
  if [ "$mode" = dry ]; then
    commands+=("${argv[*]}")  # no flag holds a space
    return
  fi
  echo
  echo "## $name: ${argv[*]}"
  local start=$SECONDS status
  if [ -n "$out" ]; then
    timeout "${STEP_TIMEOUT:-300}" "${argv[@]}" | tee "$out/$name.md"
    status=${PIPESTATUS[0]}
  else
    timeout "${STEP_TIMEOUT:-300}" "${argv[@]}"
    status=$?
  fi
  echo "($name: status $status, $((SECONDS - start)) s)"
  [ "$status" = 0 ] || failed+=("$name")
}

run attention bench_attention.py --impls reference,xla,cudnn,pallas --batch 8 --heads 16 \
  --head-dim 64 --lengths 512,1024,2048,4096 --dtype bfloat16 --iters 20 \
  --tiny --batch 1 --heads 2 --head-dim 8 --lengths 16 --dtype float32 --iters 1 --warmup 1
run attention_causal bench_attention.py --impls reference,xla,cudnn,pallas --batch 8 --heads 16 \
  --head-dim 64 --lengths 512,1024,2048,4096 --dtype bfloat16 --iters 20 --causal \
  --tiny --batch 1 --heads 2 --head-dim 8 --lengths 16 --dtype float32 --iters 1 --warmup 1
run vit_b16 bench_vit.py --configs vit_b16_imagenet,mixer_b16_imagenet --batch 256 \
  --dtype bfloat16 --iters 10 \
  --tiny --configs default,mixer_fashion_mnist --batch 2 --dtype float32 --iters 1
run gpt2_small bench_lm.py --configs gpt2_small --batch 16 --seq-len 1024 --dtype bfloat16 \
  --dropout 0 --iters 10 --decode-batch 8 --decode-len 256 --decode-repeats 3 \
  --tiny --configs lm_stdlib --batch 2 --seq-len 16 --dtype float32 --iters 1 --decode-batch 1 \
  --decode-len 4 --decode-repeats 1
run unet bench_unet.py --configs cifar10 --dtype bfloat16 --train-batch 128 --sample-batch 256 \
  --train-steps 20 --steps-scale 0.2 --repeats 2 \
  --tiny --configs tiny --train-batch 2 --sample-batch 2 --train-steps 1 --steps-scale 0.002 \
  --repeats 1 --dtype float32

if [ "$mode" = dry ]; then
  printf '%s\n' "${commands[@]}" | "$py" benchmarks/check_commands.py || failed+=(check_commands)
fi
echo
if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu_suite: FAILED: ${failed[*]}" >&2
  exit 1
fi
if [ "$mode" = dry ]; then
  echo "gpu_suite: every command checks out ($SECONDS s)"
else
  echo "gpu_suite: all commands ran ($SECONDS s)"
fi
