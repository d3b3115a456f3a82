#!/usr/bin/env bash
# `loadmaster launch` on a 2-GPU node: plan Llama-3.2-1B for 2 GPUs, launch 50 steps with one rank SIGKILLed once
# (torchrun restarts the group and the trainer resumes from the last checkpoint), then print the run directory's
# summary: measured vs predicted step time, memory, throughput and MFU.
#
# Needs only torch, numpy, sympy, pyyaml and this repo: it calls `python3 -m launcher.launch` (no typer), and
# runs the tuner only where pulp and typer are installed, else takes recipes/plans/llama3.2-1b-2xh200.yaml.
#
#   OUT=/tmp/out benchmarks/launch_gpu.sh
#
# Writes $OUT/report.txt (versions, dry run, launch exit code, restart evidence, summary table), $OUT/launch.log,
# $OUT/summary.json, $OUT/metrics.jsonl and $OUT/plan.yaml. The run directory (multi-GB checkpoints) is
# $RUN_DIR, default $OUT/run. Knobs: NGPU (2), PLAN (a plan YAML for NGPU GPUs), STEPS (50), CHECKPOINT_EVERY (20),
# KILL_RANK (NGPU-1), KILL_STEP (30, 0-based), RUN_DIR.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to an output directory}
NGPU=${NGPU:-2}
STEPS=${STEPS:-50}
CHECKPOINT_EVERY=${CHECKPOINT_EVERY:-20}
KILL_RANK=${KILL_RANK:-$((NGPU - 1))}
KILL_STEP=${KILL_STEP:-30}
PLAN=${PLAN:-recipes/plans/llama3.2-1b-2xh200.yaml}
RUN_DIR=${RUN_DIR:-$OUT/run}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
report="$OUT/report.txt"
: > "$report"
say() { echo "$@" | tee -a "$report"; }

say "== versions"
python3 -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda GPUs",
torch.cuda.device_count(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")' 2>&1 | tee -a "$report"
git log -1 --format='repo %h %s' 2>/dev/null | tee -a "$report"

say "== plan"
if python3 -c 'import pulp, typer' 2>/dev/null; then
  python3 -m planner.cli plan llama3.2-1b --cluster "${NGPU}xh200" --global-batch-size 16 --seq-len 4096 \
    --time-limit 60 -o "$OUT/plan.yaml" 2>&1 | tail -n 4 | tee -a "$report"
else
  say "(pulp or typer missing: using $PLAN)"
  cp "$PLAN" "$OUT/plan.yaml"
fi
tee -a "$report" < "$OUT/plan.yaml"

say "== dry run"
python3 -m launcher.launch "$OUT/plan.yaml" --out "$RUN_DIR" --dry-run 2>&1 | tee -a "$report"
[ "${PIPESTATUS[0]}" -eq 0 ] || { say "dry run failed"; exit 2; }

say "== launch: $STEPS steps, checkpoint every $CHECKPOINT_EVERY, rank $KILL_RANK killed at step $KILL_STEP, 1 restart"
start=$(date +%s)
LOADMASTER_FAULT="kill:$KILL_RANK:$KILL_STEP" python3 -m launcher.launch "$OUT/plan.yaml" --out "$RUN_DIR" \
  --steps "$STEPS" --checkpoint-every "$CHECKPOINT_EVERY" --max-restarts 1 > "$OUT/launch.log" 2>&1
code=$?
say "exit code $code after $(( $(date +%s) - start )) s"
say "attempts: $(find "$RUN_DIR/logs" -maxdepth 3 -name 'attempt_*' -printf '%f ' 2>/dev/null)"
grep -h -m3 -E "failed|exitcode|Restarting|SIGKILL|Signals" "$OUT/launch.log" | tee -a "$report"

say "== summary (measured vs predicted)"
python3 - "$RUN_DIR" <<'EOF' 2>&1 | tee -a "$report"
import json, sys
from launcher.launch.rundir import summary_lines
run = sys.argv[1]
print("\n".join(summary_lines(run)))
s = json.load(open(f"{run}/summary.json"))
print(f"resumed from {s.get('resumed_from')}: steps {s['start_step']} -> {s['steps_done']}, data position "
      f"{s['data_position']} samples; losses {[round(x, 4) for x in s['losses'][:3]]} ... {s['final_loss']:.4f}")
EOF
cp "$RUN_DIR/summary.json" "$RUN_DIR/metrics.jsonl" "$OUT/" 2>/dev/null
exit "$code"
