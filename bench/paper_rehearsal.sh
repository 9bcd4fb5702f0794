#!/usr/bin/env bash
# The paper's sweep rehearsed on one GPU with no hub: LLaMA-3-8B's published shape with random weights
# (bench/paper_checkpoint.py) and the hub-format data mirror (llmq_core/hub_mirror.py), then the notebooks of
# bench/paper_sweep_8b.yaml through run_all.py, as `python run_all.py --sweep sweeps/paper-llama3-8b.yaml` runs them
# against the hub. The records go to a store of their own, never results/: their quality numbers mean nothing.
#
#   bash bench/paper_rehearsal.sh WORKDIR [run_all.py flags...]   # WORKDIR: 17 GB free; a second call resumes
#
# The store starts from the rows kept in bench/paper_sweep_8b/results, so that only the missing rows run; the new
# records and executed notebooks are kept there, and bench/paper_sweep_8b.csv is written from them.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:?usage: bash bench/paper_rehearsal.sh WORKDIR [run_all.py flags...]}
shift
mkdir -p "$work/results"
work=$(cd "$work" && pwd)
kept=bench/paper_sweep_8b
keep() { cp -r --update=none "$1" "$2" 2>/dev/null || cp -rn "$1" "$2"; }  # never over a record
keep "$kept/results/." "$work/results/"  # what is measured is not measured again
export HF_HUB_CACHE="$work/hub" HF_HUB_OFFLINE=1 LLMQ_RESULTS="$work/results" LLMQ_ADAPTERS="$work/adapters" \
    LLMQ_ANSWERS="$work/answers" PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
if [ ! -e "$HF_HUB_CACHE/models--meta-llama--Meta-Llama-3-8B/refs/main" ]; then
    python bench/paper_checkpoint.py --shape llama3-8b --hub-cache "$HF_HUB_CACHE"
fi
# the mirror is rebuilt each time (seconds): its cache must be written by this machine's datasets
eval "$(python -m llmq_core.hub_mirror --out "$work/mirror" --force | tail -1)"
python run_all.py --sweep bench/paper_sweep_8b.yaml --no-summary "$@" || echo "some rows failed: see above"
keep "$work/results/." "$kept/results/"
mkdir -p "$kept/notebooks" && cp runs/paper_sweep_8b/*.ipynb "$kept/notebooks/" 2>/dev/null || true
python bench/paper_sweep_8b.py
