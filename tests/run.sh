#!/usr/bin/env bash
# The README's test command: unit tests, then every notebook under nbval.
# The notebooks read a scratch copy of the committed results store and write their figures and
# tables to a scratch folder, so a test run never changes the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cp -r results "$scratch/results"
export HF_HUB_OFFLINE=1 LLMQ_RESULTS="$scratch/results" LLMQ_OUTPUT="$scratch" TQDM_MININTERVAL=10
python -m pytest -q tests "$@"
python -m pytest -q --nbval-lax -p no:cacheprovider notebooks
