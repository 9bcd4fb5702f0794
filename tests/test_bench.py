"""bench/paper_scale.py on its small stand-in shape: the table it prints is complete and its numbers are measured."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
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
