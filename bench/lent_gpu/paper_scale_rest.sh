#!/usr/bin/env bash
# What the 8B-shape table (bench/RESULTS.md) still lacks: the perplexity settings (bench/perplexity_speed.py)
# and the 32-block rows of six methods, split over the visible GPUs (one or two), each part written to $JOB_OUT
# as it is measured. About 11 minutes on two H200s (2026-11-30) and, by the same rows, 20 on one, so it runs
# detached:
#
#   LLMQ_GIT_COMMIT=<hash> bash bench/lent_gpu/run_sweep.sh start bash bench/lent_gpu/paper_scale_rest.sh
#   bash bench/lent_gpu/run_sweep.sh wait      # each next call, within 30 s of the last, until it says finished
out=${JOB_OUT:-/tmp}
first=(rtn billm dbllm)
second=(rtn quip pbllm gptq-act-order smoothquant)
perplexity_settings() {
    python3 -m pytest -q -p no:cacheprovider tests/test_perplexity.py -k gpu
    python3 bench/perplexity_speed.py --device cuda >"$out/perplexity_speed.md"
}
if [ "$(python3 -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
    (export CUDA_VISIBLE_DEVICES=0; perplexity_settings; python3 bench/paper_scale.py --device cuda \
        --methods "${first[@]}" --markdown "$out/paper_scale-gpu0.md") >"$out/gpu0.log" 2>&1 &
    CUDA_VISIBLE_DEVICES=1 python3 bench/paper_scale.py --device cuda --methods "${second[@]}" \
        --markdown "$out/paper_scale-gpu1.md" >"$out/gpu1.log" 2>&1 &
    wait
else
    perplexity_settings
    python3 bench/paper_scale.py --device cuda --methods "${first[@]}" "${second[@]:1}" --markdown "$out/paper_scale.md"
fi
