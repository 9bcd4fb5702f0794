#!/usr/bin/env bash
# The paper's sweep rehearsed on one GPU with no hub: LLaMA-3-8B's published shape with random weights
# (bench/paper_checkpoint.py) and the hub-format data mirror (llmq_core/hub_mirror.py), then the notebooks of
# bench/paper_sweep_8b.yaml through run_all.py, as `python run_all.py --sweep sweeps/paper-llama3-8b.yaml` runs them
# against the hub. The records go to a store of their own, never results/: their quality numbers mean nothing.
#
#   bash bench/paper_rehearsal.sh WORKDIR [run_all.py flags...]   # WORKDIR: 17 GB free; a second call resumes
#
# Then bench/paper_sweep_8b.csv and the per-target table are written from WORKDIR/results and the executed notebooks.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:?usage: bash bench/paper_rehearsal.sh WORKDIR [run_all.py flags...]}
shift
mkdir -p "$work"
work=$(cd "$work" && pwd)
export HF_HUB_CACHE="$work/hub" HF_HUB_OFFLINE=1 LLMQ_RESULTS="$work/results" LLMQ_ADAPTERS="$work/adapters" \
    LLMQ_ANSWERS="$work/answers" PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
if [ ! -e "$HF_HUB_CACHE/models--meta-llama--Meta-Llama-3-8B/refs/main" ]; then
    python bench/paper_checkpoint.py --shape llama3-8b --hub-cache "$HF_HUB_CACHE"
fi
# the mirror is rebuilt each time (seconds): its cache must be written by this machine's datasets
eval "$(python -m llmq_core.hub_mirror --out "$work/mirror" --force | tail -1)"
python run_all.py --sweep bench/paper_sweep_8b.yaml --no-summary "$@" || echo "some rows failed: see above"
python bench/paper_sweep_8b.py --store "$LLMQ_RESULTS" --runs runs/paper_sweep_8b --csv "$work/paper_sweep_8b.csv"
