#!/usr/bin/env bash
# Run a whole study on this machine: launch/run_study.sh STUDY.yaml [key=value ...]
# Safe to rerun after an interruption: completed stages and shards are skipped.
set -euo pipefail
study=${1:?usage: launch/run_study.sh STUDY.yaml [key=value ...]}; shift
exec megasynth run "$study" "$@"
