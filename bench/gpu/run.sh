#!/usr/bin/env bash
# GPU checks and benchmarks in one go (`make bench-gpu`), about 6-8 minutes on one H200:
#   ops          CUDA correctness of every shuffle kernel (copy, stack, gather, triton), compile
#   kernels      the kernel-choice table `--shuffle-kernel measure` makes at x1.0 batch 256
#   train_bf16   ours / torchvision / ours-reference training img/s, bf16: eager, channels_last,
#                compile (kernel policy auto: today's copy kernel on CUDA)
#   train_bf16_measure   ours / torchvision, bf16, eager + channels_last, policy measure
#   train_fp32, train_fp32_measure   the same in fp32 (eager, channels_last)
#   cli_dummy    the CLI's FPS@all with --dummy (made on the GPU) / the step benchmark
#   cli_jpeg     the same with real JPEGs (nvJPEG decode) and its data-wait share
#   decode       JPEG decode throughput, nvJPEG against host decoders
# Results (logs and JSON) go to $OUT, else bench/out; a summary is printed at the end. Any
# section that fails makes the script exit 1 and is named in the summary.
#
# Usage: bench/gpu/run.sh [--dry-run] [--help]
#   --dry-run  every section on the CPU with tiny sizes (x0.5, batch 4, 32 px, no compile,
#              no nvJPEG): checks this script, not the GPU; takes a few minutes on 2 cores.
# SECTIONS="ops kernels" runs only those sections.
set -uo pipefail
cd "$(dirname "$0")/../.."

dry_run=0
for arg in "$@"; do
  case $arg in
    --dry-run) dry_run=1 ;;
    -h | --help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

out=${OUT:-bench/out}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH="$PWD/trainer${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
all_sections="ops kernels train_bf16 train_bf16_measure train_fp32 train_fp32_measure cli_dummy cli_jpeg decode"
sections=${SECTIONS:-$all_sections}
failed=()

if [ "$dry_run" = 1 ]; then
  device=cpu arch=shufflenet_v2_x0_5 batch=4 size=32 steps=1 warmup=1 rounds=1 cli_steps=12
  variants=eager,channels_last quick=--quick workers=1
  echo "dry run: CPU, tiny sizes; the decode section needs CUDA and is left out" | tee "$out/gpu.txt"
  sections=${sections//decode/}
else
  device=cuda arch=shufflenet_v2_x1_0 batch=256 size=224 steps=20 warmup=5 rounds=3 cli_steps=50
  variants=eager,channels_last,compile quick= workers=8
  if ! nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv \
    | tee "$out/gpu.txt"; then
    echo "run.sh: nvidia-smi failed: no CUDA GPU here (use --dry-run on a CPU machine)" >&2
    exit 1
  fi
fi
$py -c "import torch, torchvision, triton; print('torch', torch.__version__, 'torchvision',
torchvision.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())" \
  | tee -a "$out/gpu.txt"

section() {  # name, timeout seconds, command...
  local name=$1 limit=$2
  shift 2
  case " $sections " in *" $name "*) ;; *) return 0 ;; esac
  echo "=== $name"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc, $((SECONDS - start)) s" | tee -a "$out/$name.log"
  [ "$rc" -eq 0 ] || failed+=("$name (exit $rc)")
}

step=(bench/bench_train_step.py --device "$device" --arch "$arch" --batch "$batch"
  --image-size "$size" --steps "$steps" --warmup "$warmup" --rounds "$rounds")
cli=(bench/gpu/cli_vs_step.py --step-json "$out/train_bf16.json" --device "$device" --arch "$arch"
  --batch "$batch" --image-size "$size" --amp bf16 --steps "$cli_steps" --workers "$workers"
  --out "$out/result")

section ops 150 $py bench/gpu/check_ops_cuda.py --device "$device" $quick
section kernels 60 $py bench/gpu/kernel_table.py --device "$device" --arch "$arch" \
  --batch "$batch" --image-size "$size" --json "$out/kernels.json"
section train_bf16 240 $py "${step[@]}" --amp bf16 --variants "$variants" \
  --models ours,torchvision,ours-reference --json "$out/train_bf16.json"
section train_bf16_measure 60 $py "${step[@]}" --amp bf16 --variants eager,channels_last \
  --shuffle-kernel measure --json "$out/train_bf16_measure.json"
section train_fp32 60 $py "${step[@]}" --amp off --variants eager,channels_last \
  --models ours,torchvision,ours-reference --json "$out/train_fp32.json"
section train_fp32_measure 60 $py "${step[@]}" --amp off --variants eager,channels_last \
  --shuffle-kernel measure --json "$out/train_fp32_measure.json"
section cli_dummy 90 $py "${cli[@]}" --data dummy --json "$out/cli_dummy.json"
section cli_jpeg 120 $py "${cli[@]}" --data jpeg --json "$out/cli_jpeg.json"
section decode 60 $py bench/gpu/bench_decode.py --count 512 --batch 256 --require-cuda

echo "=== summary"
# shellcheck disable=SC2086 # one argument per section name
$py bench/gpu/summarize.py "$out" $sections || failed+=("summary (a figure is missing)")
if [ ${#failed[@]} -gt 0 ]; then
  printf 'FAILED: %s\n' "${failed[@]}"
  exit 1
fi
echo "all sections passed"
