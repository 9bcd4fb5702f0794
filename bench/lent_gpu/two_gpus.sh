#!/usr/bin/env bash
# The runs that need the two-GPU machine (issue 8), then what is left of the 8B-shape table (issue 7), two at a
# time, one on each GPU. Longer than one device call, so it is started detached and followed:
#
#   LLMQ_GIT_COMMIT=<hash> bash bench/lent_gpu/run_sweep.sh start bash bench/lent_gpu/two_gpus.sh
#   bash bench/lent_gpu/run_sweep.sh wait      # each next call, within 30 s of the last, until it says finished
#
# Each step writes its table to $JOB_OUT as it measures, in order of need, so that a session whose device time
# runs out still brings back the steps before; a step that fails does not stop the next.
out=${JOB_OUT:-/tmp}
python3 -c 'import torch; print(torch.cuda.device_count(), "GPUs:", torch.cuda.get_device_name())'
# 1. the same eight configurations with --gpus 1, then --gpus 2: the wall-time ratio and each record once
python3 bench/multi_gpu.py --sweep bench/lent_gpu/two-gpus.yaml --gpus 2 --jobs 4 --markdown "$out/multi_gpu.md"
# 2. LLaMA-3-70B's shape at 96 blocks, 158 GiB of bf16: GPTQ one block at a time on GPU 0 (the first 8 blocks:
# all 96 take longer than a session's device time), then perplexity over both GPUs with device_map="auto"
python3 bench/big_model.py --shape llama3-70b --layers 96 --quantize-blocks 8 --markdown "$out/big_model.md"
# 3. the 8B shape at 32 blocks: the offload tests and the methods not yet measured there, and evaluation in full
(CUDA_VISIBLE_DEVICES=0 python3 bench/paper_scale.py --device cuda --methods rtn eval pbllm dbllm smoothquant \
    gptq-act-order --markdown "$out/paper_scale-gpu0.md") >"$out/gpu0.log" 2>&1 &
(CUDA_VISIBLE_DEVICES=1 python3 -m pytest -q -p no:cacheprovider tests/test_offload.py -k "cuda or gpu"
 CUDA_VISIBLE_DEVICES=1 python3 bench/paper_scale.py --device cuda --methods rtn quip billm \
    --markdown "$out/paper_scale-gpu1.md") >"$out/gpu1.log" 2>&1 &
wait
