#!/usr/bin/env bash
# The runs that need the two-GPU machine (issue 8). Longer than one device call, so it is started detached and
# followed:
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
# 2. LLaMA-3-70B's shape at 96 blocks, 157 GiB of bf16: GPTQ one block at a time on GPU 0 (the first 8 blocks:
# all 96 take longer than a session's device time), then perplexity over both GPUs with device_map="auto"
python3 bench/big_model.py --shape llama3-70b --layers 96 --quantize-blocks 8 --markdown "$out/big_model.md"
