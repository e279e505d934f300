#!/usr/bin/env bash
# Train a study's runs on this node with torchrun (any number of processes; CPU: gloo, GPU: NCCL).
#
#   launch/train.sh [--nproc N] [--run ID]... [--mixture NAME]... [--dry-run] STUDY.yaml|RUN.yaml [key=value ...]
#
#   --nproc N     processes (default: number of GPUs, or 1 without GPUs)
#   --run ID      train only run ID (repeatable; default all planned runs)
#   --mixture M   train only the runs of mixture M (repeatable)
#   --dry-run     print the resolved config and the parallel layout (TP x PP x DP, micro batches) and exit
# STUDY.yaml is a study file; RUN.yaml a run's resolved STUDY_DIR/runs/<run_id>/run.yaml (exactly that run).
# Completed runs are skipped; interrupted runs resume from their latest checkpoint (exact resume; TP/PP may
# change in between); a run whose loss-curve settings changed is refused, naming the field.
# Examples:
#   launch/train.sh --nproc 8 examples/quickstart.yaml model.preset=llama3-1b model.transformer_impl=transformer_engine \
#       model.precision=bf16 train.parallel.tensor_model_parallel_size=2 train.parallel.use_distributed_optimizer=true
#   launch/train.sh --dry-run --nproc 16 examples/quickstart.yaml train.parallel.pipeline_model_parallel_size=2
set -euo pipefail
procs=""; dry=""; extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nproc) procs=$2; shift 2 ;;
    --mixture|--run) extra+=("$1" "$2"); shift 2 ;;
    --dry-run) dry=1; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
study=${1:?usage: launch/train.sh [--nproc N] [--run ID] [--mixture NAME] [--dry-run] STUDY.yaml|RUN.yaml [key=value ...]}; shift
PYTHON=${PYTHON:-python}
if [[ -z "$procs" ]]; then
  procs=$("$PYTHON" -c 'import torch; print(max(torch.cuda.device_count(), 1))' 2>/dev/null || echo 1)
fi
if [[ -n "$dry" ]]; then
  exec "$PYTHON" -m megasynth.study.launch "$study" --dry-run --nproc "$procs" "${extra[@]}" "$@"
fi
# One thread per process on CPU unless set (torchrun's default would oversubscribe small machines).
cores=$(nproc); export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( cores / procs > 0 ? cores / procs : 1 ))}
exec "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$procs" \
  -m megasynth.study.launch "$study" "${extra[@]}" "$@"
