#!/usr/bin/env bash
# GPU checks and benchmarks in one go (`make bench-gpu`): CUDA correctness of the custom ops,
# shuffle op timing, training images/s of our model vs torchvision (bf16, channels_last,
# compile) on synthetic data, GPU JPEG decode, and a short CLI run on CUDA.
# Writes logs to $OUT (or bench/out) and prints a summary at the end.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-bench/out}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH="$PWD/trainer${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0

# SECTIONS="ops shuffle" runs only those sections (default: all).
sections=${SECTIONS:-ops shuffle variants train_bf16 train_fp32 decode cli}

section() {  # name, timeout seconds, command...
  local name=$1 limit=$2
  shift 2
  case " $sections " in *" $name "*) ;; *) return 0 ;; esac
  echo "=== $name"
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || { echo "=== $name exited $rc"; status=1; }
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv | tee "$out/gpu.txt"
$py -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" | tee -a "$out/gpu.txt"

section ops 240 $py bench/gpu/check_ops_cuda.py
section shuffle 120 $py bench/bench_shuffle.py --device cuda --shape 256,116,28,28 --repeat 200
section variants 120 $py bench/gpu/shuffle_variants.py
section train_bf16 420 $py bench/bench_train_step.py --device cuda --arch shufflenet_v2_x1_0 \
  --batch 256 --amp bf16 --steps 20 --warmup 5 --rounds 3 --variants eager,channels_last,compile \
  --models ours,torchvision,ours-reference \
  --json "$out/train_bf16.json"
section train_fp32 180 $py bench/bench_train_step.py --device cuda --arch shufflenet_v2_x1_0 \
  --batch 256 --amp off --steps 20 --warmup 5 --rounds 3 --variants eager,channels_last \
  --json "$out/train_fp32.json"
section decode 180 $py bench/gpu/bench_decode.py --count 512 --batch 256
if [ -f trainer/shufflenet_trainer/cli.py ]; then
  section cli 240 $py -m shufflenet_trainer.cli --dummy --device cuda --amp bf16 --channels-last \
    -a shufflenet_v2_x1_0 -b 256 --epochs 1 --max-steps-per-epoch 60 -j 4 --output-dir "$out/result"
fi

echo "=== summary"
grep -h -E "^(ok|FAIL)|passed|failed|x$|images/s|FPS@all" "$out"/*.log | grep -v "^ok" | tail -40
exit $status
