#!/usr/bin/env bash
# The GPU checks of perplexity's GPU defaults (4 windows a batch, compiled blocks), about 7 minutes on an H200:
# the GPU tests, the settings side by side (bench/perplexity_speed.py), the 8B shape's evaluation row through the
# defaults, and two configurations of the embedded model through run_all (RTN's blocks compile, SmoothQuant's
# activation quantizers keep them eager) into a fresh store, to set beside the committed, eager records.
#
#   LLMQ_GIT_COMMIT=<hash> bash bench/lent_gpu/run_sweep.sh start bash bench/lent_gpu/perplexity_check.sh
out=${JOB_OUT:-/tmp}
python3 -m pytest -q -p no:cacheprovider tests/test_perplexity.py tests/test_offload.py -k "cuda or gpu"
python3 bench/perplexity_speed.py --device cuda --batches 1 4 >"$out/perplexity_speed.md"
python3 bench/paper_scale.py --device cuda --methods eval --limit 100 --markdown "$out/paper_scale_eval.md"
store=$(mktemp -d)
for config in "--method rtn --wbits 4 --group-size 128" "--method smoothquant --wbits 8 --abits 8"; do
    # shellcheck disable=SC2086
    LLMQ_RESULTS=$store python3 run_all.py --sweep sweeps/full.yaml $config --tasks --no-summary
done
LLMQ_RESULTS=$store python3 - >"$out/run_all_ppl.md" <<'PY'
from llmq_core.results import ResultStore
print("| method | text | perplexity | windows | wall s |\n|---|---|---|---|---|")
for record in ResultStore().records():
    key, metrics = record["key"], record["metrics"]
    print(f"| {key['method']} w{key['wbits']}a{key['abits']} g{key['group_size']} | {key['target']} | "
          f"{metrics['ppl']:.4f} | {metrics['n']} | {record['wall_time_s']:.2f} |")
PY
