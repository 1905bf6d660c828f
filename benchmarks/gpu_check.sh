#!/usr/bin/env bash
# One prepared GPU run: the CUDA-marked tests, then benchmarks/grpo_step.py at the consumer-12gb preset for reprokit
# and TRL (1 short warm-up + 2 timed steps each) and at the paper preset with 3072-token responses for reprokit
# (1 timed step: its peak memory is the figure that matters), generation tokens/s and the fraction of the
# memory-bandwidth bound included. Each part runs under its own `timeout`, all of them within one budget (default
# 530 s, so the script ends inside a 10-minute command with time to spare), and each part's figures are written to
# the output folder as soon as they exist (grpo_step.py rewrites its JSON after every step), followed by a fresh
# summary.md / summary.json, so a run that is cut off still returns what it measured.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]             # on the GPU machine; OUT_DIR defaults to $OUT
#   bash benchmarks/gpu_check.sh --dry-run [OUT_DIR]   # the same sequence on CPU: --tiny models, tiny step counts,
#                                                      # this interpreter's packages (no wheels installed)
#
# On the GPU machine (no network; python3 3.12 with torch, transformers, peft, lightning, ... but not bitsandbytes,
# trl, datasets, math-verify, jsonargparse) the missing packages come as wheels from the git-ignored folder .whl/,
# which benchmarks/fetch_gpu_wheels.sh fills here; carry it (`carry: [".whl"]`) and run from the repository root.
#
# Output folder (7 files): gpu_check.log (everything), tests.txt, consumer-reprokit.json, consumer-trl.json,
# paper-reprokit.json (grpo_step.py --json: per-step records, medians, memory), summary.md, summary.json.
#
# Environment:
#   GPU_CHECK_BUDGET=530           seconds for the whole script; a part starts only if enough is left
#   GPU_CHECK_TIMEOUT_<PART>=S     cap of one part, PART one of INSTALL TESTS PREPARE CONSUMER_REPROKIT
#                                  PAPER_REPROKIT CONSUMER_TRL (defaults: 60 75 60 150 150 170)
#   GPU_CHECK_PARTS="..."          the parts to run (default all, in this order: install tests prepare
#                                  consumer-reprokit paper-reprokit consumer-trl)
#   GPU_CHECK_WARMUP_TOKENS=64     response length of the consumer-12gb warm-up step (its kernels, not its length)
#   GPU_CHECK_MODEL_DIR=DIR        where the random-weight model is saved (default /tmp/gpu-check-model; a temporary
#                                  folder in a dry run)
#   PYTHON=python3                 the interpreter

set -u
cd "$(dirname "$0")/.." || exit 2
REPO=$PWD

DRY_RUN=0
if [ "${1:-}" = "--dry-run" ]; then
    DRY_RUN=1
    shift
fi
OUT_DIR=${1:-${OUT:-}}
if [ -z "$OUT_DIR" ]; then
    echo "gpu_check.sh: no output folder: give one (bash benchmarks/gpu_check.sh [--dry-run] DIR) or set \$OUT" >&2
    exit 2
fi
mkdir -p "$OUT_DIR" || exit 2
OUT_DIR=$(cd "$OUT_DIR" && pwd)
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-530}
PARTS=${GPU_CHECK_PARTS:-install tests prepare consumer-reprokit paper-reprokit consumer-trl}
WARMUP_TOKENS=${GPU_CHECK_WARMUP_TOKENS:-64}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
STATUS=$WORK/status.jsonl
LOG=$OUT_DIR/gpu_check.log
: >"$STATUS"
rm -f "$OUT_DIR"/{gpu_check.log,tests.txt,consumer-reprokit.json,consumer-trl.json,paper-reprokit.json,summary.md,summary.json}
START=$(date +%s)
DEADLINE=$((START + BUDGET))
SUMMARY_RESERVE=25  # seconds kept for the last summary (and timeout's kill grace)

if [ "$DRY_RUN" = 1 ]; then
    MODEL_DIR=${GPU_CHECK_MODEL_DIR:-$WORK/model}
    # CPU: the tiny Qwen2 (real vocabulary), one thread, the smallest step counts that still run every path.
    BENCH=(--tiny --device cpu --threads 1)
    CONSUMER_STEPS=(--warmup 1 --warmup_tokens 4 --steps 1)
    PAPER_STEPS=(--warmup 0 --steps 1 --max_new_tokens 16)
else
    MODEL_DIR=${GPU_CHECK_MODEL_DIR:-/tmp/gpu-check-model}
    BENCH=()
    CONSUMER_STEPS=(--warmup 1 --warmup_tokens "$WARMUP_TOKENS" --steps 2)
    PAPER_STEPS=(--warmup 0 --steps 1 --max_new_tokens 3072)
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 \
    TRANSFORMERS_VERBOSITY=error
if [ "$DRY_RUN" = 1 ]; then
    export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
else
    export PYTHONPATH=/tmp/site:$REPO${PYTHONPATH:+:$PYTHONPATH}
fi

log() { echo "[gpu_check $(($(date +%s) - START)) s] $*" | tee -a "$LOG"; }

cap_of() {  # cap_of PART DEFAULT: the part's cap in seconds (GPU_CHECK_TIMEOUT_<PART> overrides)
    local var="GPU_CHECK_TIMEOUT_$(echo "$1" | tr 'a-z-' 'A-Z_')"
    echo "${!var:-$2}"
}

summarize() {
    timeout 60 "$PY" benchmarks/gpu_summary.py --out "$OUT_DIR" --status "$STATUS" "$@" >>"$LOG" 2>&1 ||
        echo "[gpu_check] writing the summary failed (see $LOG)" | tee -a "$LOG"
}

# run_part NAME DEFAULT_CAP COMMAND...: the command under `timeout`, its output in the log, its status recorded,
# the summary rewritten. A part is skipped when it is not in GPU_CHECK_PARTS or less than 10 s of the budget is left.
run_part() {
    local name=$1 cap=$2
    shift 2
    case " $PARTS " in *" $name "*) ;; *) return 0 ;; esac
    cap=$(cap_of "$name" "$cap")
    local left=$((DEADLINE - $(date +%s) - SUMMARY_RESERVE))
    local limit=$((cap < left ? cap : left))
    if [ "$left" -lt 10 ]; then
        log "$name: skipped, the budget is spent (${left} s left of ${BUDGET} s)"
        printf '{"part": "%s", "rc": null, "seconds": 0, "limit": %d, "skipped": true}\n' "$name" "$limit" >>"$STATUS"
        summarize
        return 0
    fi
    log "$name: starting (limit ${limit} s)"
    local t0=$(date +%s)
    # timeout signals its whole process group, so grpo_step.py's per-system child process ends with it.
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    local seconds=$(($(date +%s) - t0))
    case $rc in
        0) log "$name: done in ${seconds} s" ;;
        124 | 137) log "$name: CUT OFF by its ${limit} s timeout (exit $rc); what it wrote so far is kept" ;;
        *) log "$name: FAILED (exit $rc) after ${seconds} s" ;;
    esac
    printf '{"part": "%s", "rc": %d, "seconds": %d, "limit": %d}\n' "$name" "$rc" "$seconds" "$limit" >>"$STATUS"
    summarize
}

install_wheels() {
    if [ "$DRY_RUN" = 1 ]; then
        echo "dry run: no wheels installed, using the packages of $($PY -c 'import sys; print(sys.executable)')"
    else
        if ! ls .whl/*.whl >/dev/null 2>&1; then
            echo "no wheels in $REPO/.whl: run 'bash benchmarks/fetch_gpu_wheels.sh' on the machine with a network" \
                 "and carry .whl to this one"
            return 3
        fi
        du -ch .whl/*.whl | tail -1
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl || return $?
    fi
    "$PY" - <<'EOF'
import importlib, os, platform
import torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"device {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none (CPU)'}")
missing = []
for name in ("numpy", "transformers", "huggingface_hub", "peft", "lightning", "accelerate", "pyarrow", "pandas",
             "bitsandbytes", "trl", "datasets", "math_verify", "latex2sympy2_extended", "jsonargparse", "reprokit",
             "reprokit.cli", "reprokit.training.grpo"):
    try:
        module = importlib.import_module(name)
        print(f"  {name} {getattr(module, '__version__', '')} from {getattr(module, '__file__', '?')}")
    except Exception as err:  # noqa: BLE001 - report every import that fails, not only the first
        missing.append(name)
        print(f"  {name}: NOT IMPORTABLE ({type(err).__name__}: {err})")
# On the GPU machine every one is needed; a dry run only reports (e.g. a CI without trl runs the rest).
strict = os.environ.get("DRY_RUN") != "1" or any(name.startswith("reprokit") for name in missing)
raise SystemExit(f"not importable: {', '.join(missing)}" if missing and strict else 0)
EOF
}

gpu_tests() {
    # Every test module is collected (one that fails to import is reported and skipped), only gpu-marked tests run.
    set -o pipefail
    "$PY" -m pytest -q -m gpu -p no:cacheprovider --continue-on-collection-errors -rfEs tests 2>&1 |
        tee "$OUT_DIR/tests.txt"
}

# timeout runs programs, not shell functions: the two functions run in a child bash that inherits them.
export -f install_wheels gpu_tests
export DRY_RUN PY REPO OUT_DIR
BENCH=("$PY" benchmarks/grpo_step.py "${BENCH[@]}" --model_dir "$MODEL_DIR")

log "$( [ "$DRY_RUN" = 1 ] && echo "DRY RUN on CPU" || echo "GPU run" ): output in $OUT_DIR, budget ${BUDGET} s, parts: $PARTS"
if [ "$DRY_RUN" = 0 ]; then
    { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; } 2>&1 | tee -a "$LOG"
fi

run_part install 60 bash -c install_wheels
run_part tests 75 bash -c gpu_tests
run_part prepare 60 "${BENCH[@]}" --prepare-only
run_part consumer-reprokit 150 "${BENCH[@]}" --preset consumer-12gb --systems reprokit "${CONSUMER_STEPS[@]}" \
    --json "$OUT_DIR/consumer-reprokit.json"
# The paper preset before TRL: reprokit's figures for both presets first, TRL's then get what is left.
run_part paper-reprokit 150 "${BENCH[@]}" --preset paper --systems reprokit "${PAPER_STEPS[@]}" \
    --json "$OUT_DIR/paper-reprokit.json"
run_part consumer-trl 170 "${BENCH[@]}" --preset consumer-12gb --systems trl "${CONSUMER_STEPS[@]}" \
    --json "$OUT_DIR/consumer-trl.json"

summarize --final
log "finished in $(($(date +%s) - START)) s"
echo
cat "$OUT_DIR/summary.md" 2>/dev/null || echo "no summary.md was written: see $LOG"
rm -rf "$WORK"
