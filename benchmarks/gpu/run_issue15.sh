#!/usr/bin/env bash
# Issue 15's GPU measurements on one GPU (H200; an H100 works too), in parts that fit the device's 10-minute
# command limit:
#   bash benchmarks/gpu/run_issue15.sh OUT kernels torchtitan    # call A: ~7 min (60 s + 320 s + start)
#   bash benchmarks/gpu/run_issue15.sh OUT grid loss             # call B: ~6.5 min (200 s + 170 s + start)
# Each part is `python -m benchmarks.gpu.<script> --out OUT/<part> --budget-s S` (its docstring says what it
# measures); each installs the wheels of .whl into /tmp/site itself and stops at its budget. OUT/<part> gets
# the JSON / JSON Lines; benchmarks/gpu/README.md (issue 15) says where each file is committed.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:?usage: run_issue15.sh OUT [kernels] [torchtitan] [grid] [loss]}
shift
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(kernels torchtitan grid loss)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
for part in "${parts[@]}"; do
  echo "=== $part ($(date +%T))"
  case $part in
    kernels)    python -m benchmarks.gpu.kernel_bench --out "$OUT/kernels" --budget-s 60 ;;
    torchtitan) python -m benchmarks.gpu.runtime_vs_torchtitan --out "$OUT/torchtitan" --budget-s 320 ;;
    grid)       python -m benchmarks.gpu.tuner_grid --out "$OUT/grid" --budget-s 200 ;;
    loss)       python -m benchmarks.gpu.kernel_loss_curves --out "$OUT/loss" --budget-s 170 ;;
    *) echo "unknown part $part (kernels, torchtitan, grid, loss)"; exit 2 ;;
  esac
  echo "=== $part done rc=$? ($(date +%T))"
done
rm -f "$OUT"/loss/zipf_tokens.bin
