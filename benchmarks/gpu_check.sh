#!/usr/bin/env bash
# The GPU check of issue 14, one prepared script for the one-H200 machine (Python 3.12, torch 2.11 + CUDA 13,
# no megatron-core / Transformer Engine / apex / vLLM, no registry). It ends within 8 minutes there, so that a
# rerun still fits in 15 minutes of device time. Parts, most important numbers first, each under a time limit,
# each writing its results into the output directory as it finishes:
#   0. install the carried wheels (.whl/: megatron-core) into a --target dir on PYTHONPATH; versions, nvidia-smi
#   1. benchmarks/train_throughput.py, llama3-1b: megatron-core local spec bf16 with SDPA and with megatron's
#      DotProductAttention, and the same shape as HF LlamaForCausalLM (SDPA, bf16 autocast), eager and
#      torch.compile; seq_length 4096, vocab 128,256, 3 warm-up + 10 timed steps
#   2. the same for llama3-300m
#   3. the gpu-marked tests (pytest -m gpu): the ones that need Transformer Engine skip
#   4. the quickstart's train stage on the carried data (.gpu_carry/, from benchmarks/gpu_check_prepare.sh),
#      switched to the GPU by study-file fields alone: model.preset=llama3-100m model.precision=bf16
#      model.attention_backend=sdpa (transformer_impl stays local: TE cannot travel)
#   5. llama3-3b (SDPA and HF, compiled HF only if time is left), if at least 70 s remain
# Output (at most 8 files, as the device tool returns them): gpu_check.log, summary.txt, throughput.json,
# throughput.txt, tests.txt, study_summary.json, study_metrics.jsonl, study_run.yaml.
#
#   bash benchmarks/gpu_check.sh [--out DIR]        # on the GPU machine (DIR default: $OUT, else gpu_check_out)
#   bash benchmarks/gpu_check.sh --dry-run [--out DIR]
#       every part on the CPU with tiny settings (llama3-micro, fp32, seq_length 64, 1 + 2 steps; the gpu tests'
#       bodies on the CPU through MEGASYNTH_GPU_TESTS_ON_CPU=1), to check this script and the wheel list first.
# Environment: PYTHON (default python3), GPU_CHECK_BUDGET_S (whole-script limit, default 420 s on the GPU; 5400 s
# in the dry run, whose part limits are 12 times the GPU ones).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
DRY=0
OUT_DIR=${OUT:-gpu_check_out}
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --out) OUT_DIR=$2; shift 2 ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
exec > >(tee -a "$OUT_DIR/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# On the CPU (dry run) every part's limit is SCALE times longer: imports alone take a minute on a busy 2-core machine.
if [[ $DRY == 1 ]]; then BUDGET=${GPU_CHECK_BUDGET_S:-5400}; SCALE=12; else BUDGET=${GPU_CHECK_BUDGET_S:-420}; SCALE=1; fi
START=$SECONDS
SUMMARY=$OUT_DIR/summary.txt
: > "$SUMMARY"
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

remaining() { echo $(( BUDGET - (SECONDS - START) )); }

# part NAME LIMIT_S MIN_S CMD...: run CMD under min(LIMIT_S, time left) unless fewer than MIN_S seconds are left.
part() {
  local name=$1 limit=$(( $2 * SCALE )) min=$(( $3 * SCALE )); shift 3
  local left; left=$(remaining)
  if (( left < min )); then
    echo "== $name: skipped ($left s left of $BUDGET, needs $min)"
    printf '%-34s %-8s %6s s\n' "$name" "skipped" 0 >> "$SUMMARY"
    return 0
  fi
  (( limit > left )) && limit=$left
  echo "== $name (limit ${limit}s, ${left}s left) $(date -u +%H:%M:%S)"
  local t0=$SECONDS
  # A bash function (exported below) runs in a child bash, so that timeout can stop it and all it started.
  timeout --signal=TERM --kill-after=10 "$limit" bash -c '"$@"' bash "$@"
  local rc=$?
  local status=ok
  (( rc == 124 || rc == 137 )) && status=timeout
  (( rc != 0 && rc != 124 && rc != 137 )) && status="rc=$rc"
  echo "== $name: $status in $(( SECONDS - t0 ))s"
  printf '%-34s %-8s %6s s\n' "$name" "$status" "$(( SECONDS - t0 ))" >> "$SUMMARY"
  return 0
}

# --- 0. environment and wheels -------------------------------------------------------------------------------
install_wheels() {
  local site=$WORK/site
  shopt -s nullglob
  local wheels=(.whl/*.whl)
  if (( ${#wheels[@]} == 0 )); then echo "no wheels in .whl/ (run benchmarks/gpu_check_prepare.sh)"; return 1; fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "${wheels[@]}" \
    || return 1
  "$PY" - <<'EOF'
import importlib, importlib.metadata as md, platform, sys
import torch
print(f"Python {platform.python_version()} ({sys.executable}); torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"available {torch.cuda.is_available()}" + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
for dist in ("megatron-core", "transformers", "tokenizers", "safetensors", "numpy", "pyyaml", "tensorboard", "pytest"):
    try:
        print(f"  {dist} {md.version(dist)}")
    except md.PackageNotFoundError:
        print(f"  {dist}: NOT INSTALLED")
import megatron.core
print(f"  megatron.core from {megatron.core.__file__}")
for name in ("transformer_engine", "apex", "flash_attn"):
    print(f"  {name}: {'present' if importlib.util.find_spec(name) else 'absent'}")
EOF
}
export PYTHONPATH="$REPO:$WORK/site"
echo "gpu_check.sh $( [[ $DRY == 1 ]] && echo --dry-run ) at $(date -u +%FT%TZ), budget ${BUDGET}s, output $OUT_DIR"
git -C "$REPO" log --oneline -1 2>/dev/null || true
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
export -f install_wheels
export PY WORK OUT_DIR DRY REPO
part "0 install wheels" 60 0 install_wheels
if ! "$PY" -c "import megatron.core" 2>/dev/null; then
  echo "megatron.core does not import: stopping"; cat "$SUMMARY"; exit 1
fi

# --- 1, 2, 5. throughput ------------------------------------------------------------------------------------
TP=("$PY" benchmarks/train_throughput.py --transformer-impl local --json "$OUT_DIR/throughput.json"
    --table "$OUT_DIR/throughput.txt" --append)
if [[ $DRY == 1 ]]; then
  SHAPE_1B=(--presets llama3-micro --precisions fp32 --seq-length 64 --vocab-size 8192 --micro-batch-size 2
            --global-batch-size 4 --warmup 1 --steps 2)
  SHAPE_300M=("${SHAPE_1B[@]}")
  SHAPE_3B=("${SHAPE_1B[@]}")
else
  COMMON=(--precisions bf16 --seq-length 4096 --vocab-size 128256 --warmup 3 --steps 10)
  SHAPE_1B=(--presets llama3-1b "${COMMON[@]}" --micro-batch-size 1 --global-batch-size 4)
  SHAPE_300M=(--presets llama3-300m "${COMMON[@]}" --micro-batch-size 2 --global-batch-size 4)
  SHAPE_3B=(--presets llama3-3b "${COMMON[@]}" --micro-batch-size 1 --global-batch-size 2)
fi
rm -f "$OUT_DIR/throughput.json" "$OUT_DIR/throughput.txt"
part "1 throughput llama3-1b" 170 60 "${TP[@]}" "${SHAPE_1B[@]}" --attention-backends sdpa local --hf-compile
part "2 throughput llama3-300m" 120 60 "${TP[@]}" "${SHAPE_300M[@]}" --attention-backends sdpa local --hf-compile

# --- 3. gpu tests -------------------------------------------------------------------------------------------
gpu_tests() {
  local files; files=$(grep -l "mark.gpu" tests/test_*.py | tr '\n' ' ')
  echo "pytest -m gpu $files"
  # shellcheck disable=SC2086
  "$PY" -m pytest -v -rs --tb=short -m gpu -p no:cacheprovider $files 2>&1 | tee "$OUT_DIR/tests.txt"
  return "${PIPESTATUS[0]}"
}
if [[ $DRY == 1 ]]; then export MEGASYNTH_GPU_TESTS_ON_CPU=1; fi
export -f gpu_tests
part "3 pytest -m gpu" 100 40 gpu_tests
unset MEGASYNTH_GPU_TESTS_ON_CPU

# --- 4. the quickstart's train stage on the GPU -------------------------------------------------------------
study() {
  if [[ ! -f .gpu_carry/study_args ]]; then echo "no .gpu_carry/ (run benchmarks/gpu_check_prepare.sh)"; return 1; fi
  local args=() dir=$WORK/study
  mapfile -t args < .gpu_carry/study_args
  cp -r .gpu_carry/study "$dir"
  if [[ $DRY == 1 ]]; then
    args+=(model.preset=llama3-micro model.precision=fp32 model.attention_backend=sdpa train.seq_length=64
           train.micro_batch_size=2 train.global_batch_size=4 train.train_iters=6 train.eval_interval=3
           train.eval_iters=1 train.log_interval=1 train.optimizer.lr_warmup_iters=2)
  else
    args+=(model.preset=llama3-100m model.precision=bf16 model.attention_backend=sdpa)
  fi
  echo "megasynth train examples/quickstart.yaml --study-dir $dir ${args[*]}"
  "$PY" -m megasynth.cli train examples/quickstart.yaml --study-dir "$dir" "${args[@]}"
  local rc=$?
  local run=$dir/runs/natural
  [[ -f $run/summary.json ]] && cp "$run/summary.json" "$OUT_DIR/study_summary.json"
  [[ -f $run/metrics.jsonl ]] && cp "$run/metrics.jsonl" "$OUT_DIR/study_metrics.jsonl"
  [[ -f $run/run.yaml ]] && cp "$run/run.yaml" "$OUT_DIR/study_run.yaml"
  [[ -f $run/summary.json ]] && "$PY" -c "import json,sys; s=json.load(open(sys.argv[1])); print(json.dumps(s, indent=1)[:3000])" "$run/summary.json"
  return $rc
}
export -f study
part "4 study train stage" 100 40 study

# --- 5. llama3-3b if time is left ----------------------------------------------------------------------------
if (( $(remaining) >= 150 * SCALE )); then
  part "5 throughput llama3-3b" 150 70 "${TP[@]}" "${SHAPE_3B[@]}" --attention-backends sdpa --hf-compile
else
  part "5 throughput llama3-3b" 150 70 "${TP[@]}" "${SHAPE_3B[@]}" --attention-backends sdpa
fi

echo
echo "== summary ($(( SECONDS - START ))s of ${BUDGET}s)"
cat "$SUMMARY"
[[ -f $OUT_DIR/throughput.txt ]] && cat "$OUT_DIR/throughput.txt"
