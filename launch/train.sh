#!/usr/bin/env bash
# Train a study's runs on this node with torchrun (any number of processes; CPU: gloo, GPU: NCCL).
#
#   launch/train.sh [--nproc N] [--mixture NAME]... [--dry-run] STUDY.yaml [key=value ...]
#
#   --nproc N     processes (default: number of GPUs, or 1 without GPUs)
#   --mixture M   train only mixture M (repeatable; default all)
#   --dry-run     print the resolved config and the parallel layout (TP x PP x DP, micro batches) and exit
# STUDY.yaml is a study file or a run's resolved runs/<mix>/config.yaml. Completed runs are skipped;
# interrupted runs resume from their latest checkpoint (exact resume; TP/PP may change in between).
# Examples:
#   launch/train.sh --nproc 8 examples/quickstart.yaml model.preset=llama3-1b model.transformer_impl=transformer_engine \
#       model.precision=bf16 train.tensor_model_parallel_size=2 train.use_distributed_optimizer=true
#   launch/train.sh --dry-run --nproc 16 examples/quickstart.yaml train.pipeline_model_parallel_size=2
set -euo pipefail
procs=""; dry=""; extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nproc) procs=$2; shift 2 ;;
    --mixture) extra+=(--mixture "$2"); shift 2 ;;
    --dry-run) dry=1; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
study=${1:?usage: launch/train.sh [--nproc N] [--mixture NAME] [--dry-run] STUDY.yaml [key=value ...]}; shift
PYTHON=${PYTHON:-python}
if [[ -z "$procs" ]]; then
  procs=$("$PYTHON" -c 'import torch; print(max(torch.cuda.device_count(), 1))' 2>/dev/null || echo 1)
fi
if [[ -n "$dry" ]]; then
  exec "$PYTHON" -m megasynth.train.launch "$study" --dry-run --nproc "$procs" "${extra[@]}" "$@"
fi
# One thread per process on CPU unless set (torchrun's default would oversubscribe small machines).
cores=$(nproc); export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( cores / procs > 0 ? cores / procs : 1 ))}
exec "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$procs" \
  -m megasynth.train.launch "$study" "${extra[@]}" "$@"
