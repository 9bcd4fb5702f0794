"""bench/paper_scale.py on its small stand-in shape: the table it prints is complete and its numbers are measured."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import big_model  # noqa: E402
import paper_scale  # noqa: E402


def test_the_same_seed_builds_the_same_random_model():
    first, second = (paper_scale.build_model("tiny", 1, "cpu") for _ in range(2))
    assert all((a == b).all() for a, b in zip(first.parameters(), second.parameters()))
    assert first.config.num_hidden_layers == 1 and first.config.hidden_size == 256


def test_the_8b_shape_is_llama3_8bs():
    config = paper_scale.LlamaConfig(**paper_scale.SHAPES["llama3-8b"])
    with paper_scale.torch.device("meta"):
        model = paper_scale.LlamaForCausalLM(config)
    assert 8.0e9 < sum(p.numel() for p in model.parameters()) < 8.1e9  # 8,030,261,248 untied


def test_tiny_run_prints_each_method_and_the_evaluation(cached_model, tmp_path, capsys):
    out = tmp_path / "RESULTS.md"
    paper_scale.main(["--shape", "tiny", "--layers", "1", "--methods", "rtn", "gptq", "eval", "--ppl-windows", "2",
                      "--limit", "4", "--batch-size", "8", "--markdown", str(out)])
    table = out.read_text()
    assert "tiny shape (1 blocks), random weights, on cpu" in table and "commit" in table.splitlines()[0]
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert "failed" not in table
    assert float(rows["gptq"].split("|")[3]) > 0 and rows["rtn"].split("|")[4].strip() == "1.0x"
    assert float(rows["gptq"].split("|")[6]) > 0  # from the committed quick-sweep records
    assert "tokens/s" in table and "lm-eval, five tasks (4 docs each)" in table


def test_the_peer_runs_where_llm_compressor_is_installed(cached_model, capsys):
    pytest.importorskip("llmcompressor")
    paper_scale.main(["--shape", "tiny", "--layers", "1", "--methods", "gptq", "peer"])
    out = capsys.readouterr().out
    assert "failed" not in out and "ours/theirs" in out


def test_the_big_model_bench_quantizes_offloaded_and_evaluates_placed(tmp_path):
    out = tmp_path / "BIG.md"
    big_model.main(["--shape", "tiny", "--device", "cpu", "--nsamples", "2", "--ppl-windows", "2", "--seqlen", "64",
                    "--markdown", str(out)])
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| ")][1:]
    assert [row[0].split(",")[0].strip() for row in rows] == ["random weights in CPU memory",
                                                              "GPTQ w4 g128 of every block", "perplexity"]
    assert "2 blocks on cpu" in rows[2][3] and "finite" in out.read_text()


def test_the_big_model_bench_says_when_it_quantized_only_the_first_blocks(tmp_path):
    out = tmp_path / "BIG.md"
    big_model.main(["--shape", "tiny", "--device", "cpu", "--nsamples", "2", "--ppl-windows", "2", "--seqlen", "64",
                    "--quantize-blocks", "1", "--markdown", str(out)])
    assert "GPTQ w4 g128 of the first 1 of 2 blocks only (a reduced run)" in out.read_text()
    assert "2 blocks on cpu" in out.read_text()  # evaluated whole


def test_quantizing_the_first_blocks_changes_those_and_leaves_the_model_whole():
    from llmq_core.methods import QuantSpec, get_method

    model = big_model.random_model_in_cpu_memory(paper_scale.LlamaConfig(**paper_scale.SHAPES["tiny"]), "cpu")
    before = [block.mlp.up_proj.weight.clone() for block in model.model.layers]
    with big_model.first_blocks_only(model, 1) as first:
        get_method("gptq").quantize(first, QuantSpec(wbits=4, group_size=128), paper_scale.torch.randint(0, 49152, (2, 64)))
    after = [block.mlp.up_proj.weight for block in model.model.layers]
    assert len(model.model.layers) == model.config.num_hidden_layers == 2
    assert not paper_scale.torch.equal(before[0], after[0]) and paper_scale.torch.equal(before[1], after[1])


def test_random_weights_drawn_elsewhere_are_a_working_llama():
    model = big_model.random_model_in_cpu_memory(paper_scale.LlamaConfig(**paper_scale.SHAPES["tiny"]), "cpu")
    weights = model.model.layers[0].mlp.up_proj.weight
    assert weights.dtype == paper_scale.torch.bfloat16 and 0.015 < float(weights.float().std()) < 0.025
    assert paper_scale.torch.isfinite(model(paper_scale.torch.tensor([[1, 2, 3]])).logits).all()


def test_the_two_gpu_sweep_has_eight_configurations_and_its_store_check_counts_each_record(tmp_path):
    import multi_gpu

    from llmq_core.results import ResultStore

    configs = multi_gpu.sweep_configs(ROOT / "bench" / "multi_gpu.yaml")
    assert len(configs) == 8 and all(config.device == "cuda" for config in configs)
    store = ResultStore(tmp_path)
    first = configs[2]
    for target in first.targets()[:3]:
        store.put(first.record_key(target), {"ppl": 1.0}, wall_time_s=1.0, device="cpu")
    expected = sum(len(config.targets()) for config in configs)
    assert multi_gpu.store_check(configs, store) == (expected, 3, 3)
    store.put({**first.record_key("piqa"), "seed": 1}, {"acc": 0.5}, wall_time_s=1.0, device="cpu")  # not the sweep's
    assert multi_gpu.store_check(configs, store) == (expected, 3, 4)


def test_the_column_loop_bench_finds_the_same_weights_before_and_after(capsys):
    import gptq_columns

    gptq_columns.main(["--rows", "64", "--cols", "192"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.endswith("e+00") or "e-" in line]
    assert len(rows) == 5 and all(row[-1] == "0.00e+00" for row in rows)  # 3 GPTQ settings, PB-LLM, QuIP


def test_the_rounding_bench_runs_each_kernel_set_in_its_own_process(capsys):
    import torch
    import rounding_spread
    kernels = rounding_spread.kernel_sets()
    assert kernels[0] == "default" and kernels[-1] == torch.backends.cpu.get_cpu_capability().lower()
    rounding_spread.main(["--methods", "fp16", "--targets", "ptb", "--jobs", "2"])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| fp16 w16a16 | ptb |"))
    values = [float(cell) for cell in row.split("|")[3:3 + len(kernels)]]
    # each child ran the kernels it was given (run_child checks), and they agree to rounding
    assert len(values) == len(kernels) and max(values) / min(values) - 1 < 1e-4
