#!/usr/bin/env bash
# Runs on an air-gapped GPU machine (the lent H100 here) inside a copy of this repository.
# A transfer that takes at most ~64 MiB needs the bundle in several calls, so each call first
# stashes the parts it carried in $STASH; the call that completes the bundle unpacks it and runs:
#
#   bash bench/lent_gpu/run_sweep.sh stash                           # a call that carries some parts
#   LLMQ_GIT_COMMIT=<hash> bash bench/lent_gpu/run_sweep.sh run ARGS  # the rest: run_all.py --no-summary ARGS
#   LLMQ_GIT_COMMIT=<hash> bash bench/lent_gpu/run_sweep.sh exec CMD  # or any command (a bench) in that setup
#   LLMQ_GIT_COMMIT=<hash> bash bench/lent_gpu/run_sweep.sh start CMD # a command longer than one call, detached
#   bash bench/lent_gpu/run_sweep.sh wait                             # the next calls, until it ends
#
# Wheels carried in .peer/ (the benchmark's peer, llm-compressor) are installed beside the bundle's.
#
# The new records come back in $OUT/results.tgz; `python bench/lent_gpu/collect.py` adds them to results/.
set -euo pipefail
STASH=${STASH:-/tmp/llmq-bundle}
mkdir -p "$STASH"
for part in .bundle/part-* .bundle/manifest.json; do
    if [ -e "$part" ]; then cp "$part" "$STASH/"; fi
done
if [ "${1:-}" = stash ]; then ls -l "$STASH"; exit 0; fi
mode=${1:-}
JOB=/tmp/llmq/job  # a started command's tree, log, pid and output files ($JOB_OUT)
if [ "$mode" = wait ]; then
    # Follow the started command for up to WAIT_S seconds, copying what it wrote to $OUT as it goes, so that a
    # call cut short still brings back the tables written so far; call again (within 30 s) while it runs.
    [ -e "$JOB/pid" ] || { echo "no started job here: begin one with '$0 start CMD...'" >&2; exit 2; }
    pid=$(cat "$JOB/pid")
    deadline=$((SECONDS + ${WAIT_S:-540}))
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
        sleep 10
        cp -r "$JOB/out/." "${OUT:-/tmp}/"
    done
    cp -r "$JOB/out/." "${OUT:-/tmp}/"
    tail -c 6000 "$JOB/out/job.log"
    nvidia-smi --query-gpu=index,memory.used,utilization.gpu --format=csv || true
    if kill -0 "$pid" 2>/dev/null; then echo "still running: call wait again"; exit 3; fi
    echo "finished"; exit 0
fi
[ "$mode" = run ] || [ "$mode" = exec ] || [ "$mode" = start ] || {
    echo "usage: $0 stash | run RUN_ALL_ARGS... | exec CMD... | start CMD... | wait" >&2; exit 2; }
shift
: "${LLMQ_GIT_COMMIT:?set LLMQ_GIT_COMMIT to the commit of this working tree (git rev-parse HEAD where it came from)}"
export LLMQ_GIT_COMMIT HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
# NVLink multicast stays off in every process (the device notes: it can take the host's shared GPUs down)
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export LLMQ_RESULTS=/tmp/llmq/results LLMQ_OUTPUT=/tmp/llmq/out  # outside the tree, which each call replaces
# trained adapters and the answers of cut tasks, so that a call resuming a cut sweep evaluates the same adapters
# instead of training again, and goes on with a task where the last call stopped
export LLMQ_ADAPTERS=/tmp/llmq/adapters LLMQ_ANSWERS=/tmp/llmq/answers PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
mkdir -p "$LLMQ_RESULTS" "$LLMQ_OUTPUT"
# what is already measured is not measured again (cp -n is --update=none in newer coreutils)
cp -r --update=none results/. "$LLMQ_RESULTS/" 2>/dev/null || cp -rn results/. "$LLMQ_RESULTS/"
if [ ! -d /tmp/site ]; then
    python3 -m llmq_core.bundle unpack "$STASH" --wheels-target /tmp/site 2>&1 | grep -v "de-quantizing"
fi
if [ -d .peer ] && [ ! -e /tmp/site/.peer-installed ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .peer/*.whl && touch /tmp/site/.peer-installed
fi
export PYTHONPATH="/tmp/site:$PWD"
if [ "$mode" = start ]; then
    if [ -e "$JOB/pid" ] && kill -0 "$(cat "$JOB/pid")" 2>/dev/null; then
        echo "a started job still runs: '$0 wait' for it, or stop it with kill -- -$(cat "$JOB/pid")" >&2; exit 2
    fi
    # in a copy of the tree, which the next calls replace; detached, so that it outlives this call
    rm -rf "$JOB" && mkdir -p "$JOB/tree" "$JOB/out" && cp -r . "$JOB/tree/"
    cd "$JOB/tree"
    export PYTHONPATH="/tmp/site:$JOB/tree" JOB_OUT="$JOB/out"
    setsid nohup "$@" >"$JOB/out/job.log" 2>&1 </dev/null &
    echo $! >"$JOB/pid"
    exec bash "$JOB/tree/bench/lent_gpu/run_sweep.sh" wait
fi
if [ "$mode" = exec ]; then
    status=0
    timeout "${SWEEP_TIMEOUT:-500}" "$@" 2>&1 | tee "${OUT:-/tmp}/exec.log" || status=$?
    exit "$status"
fi
# the kernels of a sweep cut by the last call still run, holding the GPU ([i]: not this script's own command line)
pkill -f "[i]pykernel_launcher" || true
status=0
timeout "${SWEEP_TIMEOUT:-500}" python3 run_all.py --no-summary "$@" 2>&1 | grep -v IPKernelApp || status=$?
tar czf "${OUT:-/tmp}/results.tgz" -C /tmp/llmq results -C "$PWD" runs
# 124 would read as the device call's own time limit; a cut sweep is resumed by calling again
if [ "$status" = 124 ]; then echo "sweep cut after SWEEP_TIMEOUT=${SWEEP_TIMEOUT:-500} s: call again to resume"; exit 3; fi
exit "$status"
