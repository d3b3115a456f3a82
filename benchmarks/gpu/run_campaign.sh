#!/usr/bin/env bash
# The GPU measurement campaign on the device machine (benchmarks/gpu/README.md says which calls to make).
#
#   bash benchmarks/gpu/run_campaign.sh [--cpu-smoke] PART... [--budget-s S] [--skip JOB,...] [--resume-from DIR]
#
# PART: all | profile | check | sweep1 | sweep2 | grid | loss | plain | a job name (benchmarks/gpu/campaign.py).
# Installs the carried torchao wheel (.whl/torchao-*.whl) into /tmp/site, prints the software it found, then
# runs the jobs with a deadline; results go to $OUT/results.tgz and $OUT/summary.md (.out/campaign without $OUT).
# --cpu-smoke: tiny model, CPU and gloo, 2 steps, no wheel install — catches typos and import errors anywhere.
set -u -o pipefail
# the budget counts from here: the wheel install and the environment check come out of it
export CAMPAIGN_START_EPOCH=${CAMPAIGN_START_EPOCH:-$(date +%s.%N)}
cd "$(dirname "$0")/../.."
SMOKE=0
for a in "$@"; do [[ "$a" == "--cpu-smoke" ]] && SMOKE=1; done
PY=${PYTHON:-python3}
# NVLink multicast stays off on the shared hosts (KINDS.md); keep these set for every child process.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/torchinductor_campaign}

if [[ $SMOKE == 0 ]]; then
  shopt -s nullglob
  wheels=(.whl/torchao-*.whl)
  if (( ${#wheels[@]} )); then
    timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "${wheels[@]}" && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} \
      || echo "warning: installing ${wheels[*]} failed; float8 plans will record an error"
  else
    echo "warning: no .whl/torchao-*.whl carried; float8 plans need torchao (see benchmarks/gpu/README.md)"
  fi
  timeout 30 nvidia-smi -L || echo "warning: nvidia-smi failed"
fi
timeout 120 "$PY" - <<'EOF' || echo "warning: environment check failed"
import importlib.util, torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPUs {torch.cuda.device_count()}"
      + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
for name in ("torchao", "sympy", "numpy", "yaml", "matplotlib", "scipy", "pulp", "typer"):
    spec = importlib.util.find_spec(name)
    if spec is None:
        print(f"  {name}: missing")
        continue
    mod = __import__(name)
    print(f"  {name}: {getattr(mod, '__version__', '?')}")
EOF
budget=560
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do [[ "${args[i]}" == "--budget-s" ]] && budget=${args[i+1]%.*}; done
# campaign.py keeps its own deadline; the outer timeout only guards against a hang of the scheduler itself
# (SIGTERM: it kills its jobs and packs what finished; SIGKILL 15 s later if that hangs too)
timeout -k 15 $((budget + 30)) "$PY" -m benchmarks.gpu.campaign "$@"
rc=$?
(( rc == 124 || rc == 137 )) && echo "error: campaign.py overran its budget and was stopped; results.tgz holds the jobs that finished"
exit $rc
