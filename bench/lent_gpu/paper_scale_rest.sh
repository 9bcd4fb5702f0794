#!/usr/bin/env bash
# What the 8B-shape table (bench/RESULTS.md) still lacks at 32 blocks: the offload GPU tests and six methods,
# split over the visible GPUs (one or two), each GPU's rows written to $JOB_OUT as they are measured. About 19
# minutes on one H200 (four times the 8-block times), so it runs detached:
#
#   LLMQ_GIT_COMMIT=<hash> bash bench/lent_gpu/run_sweep.sh start bash bench/lent_gpu/paper_scale_rest.sh
#   bash bench/lent_gpu/run_sweep.sh wait      # each next call, within 30 s of the last, until it says finished
out=${JOB_OUT:-/tmp}
first=(rtn pbllm dbllm smoothquant gptq-act-order)
second=(rtn quip billm)
python3 -m pytest -q -p no:cacheprovider tests/test_offload.py -k "cuda or gpu"
if [ "$(python3 -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
    CUDA_VISIBLE_DEVICES=0 python3 bench/paper_scale.py --device cuda --methods "${first[@]}" \
        --markdown "$out/paper_scale-gpu0.md" >"$out/gpu0.log" 2>&1 &
    CUDA_VISIBLE_DEVICES=1 python3 bench/paper_scale.py --device cuda --methods "${second[@]}" \
        --markdown "$out/paper_scale-gpu1.md" >"$out/gpu1.log" 2>&1 &
    wait
else
    python3 bench/paper_scale.py --device cuda --methods "${first[@]}" "${second[@]:1}" --markdown "$out/paper_scale.md"
fi
