"""The paper's sweep and its rehearsal: the rehearsal's rows are the paper's, the random checkpoint resolves as the
hub's download would, and the cost table's arithmetic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from paper_checkpoint import PUBLISHED_CONFIGS, build_checkpoint, plan_shards  # noqa: E402
from paper_cost import table_cost  # noqa: E402
from paper_sweep_8b import PAPER_SWEEP, REHEARSAL, paper_steps, row, sweep_configs  # noqa: E402

from llmq_core import assets  # noqa: E402
from llmq_core.methods import METHODS  # noqa: E402
from llmq_core.results import ResultStore  # noqa: E402


def test_the_rehearsal_runs_one_row_of_every_method_of_the_paper_sweep():
    paper = [c.to_dict() for c in sweep_configs(PAPER_SWEEP)]
    rehearsal = sweep_configs(REHEARSAL)
    assert {c.method for c in rehearsal} == set(METHODS) == {c["method"] for c in paper}
    for config in rehearsal:
        if config.options.get("steps"):  # a bounded fine-tune of the paper's schedule
            assert 0 < config.options["steps"] < paper_steps(config)
        else:
            assert config.to_dict() in paper


def test_lora_ft_rows_follow_the_reference_schedule():
    schedules = [c.options for c in sweep_configs(PAPER_SWEEP) if c.options.get("steps")]
    assert len(schedules) == 2  # QLoRA and IR-QLoRA; the NF4 row has no steps
    for options in schedules:
        assert (options["steps"], options["train_batch_size"], options["lr"], options["rank"], options["alpha"]) == \
            (10000, 16, 2e-4, 64, 16)
        assert options["instructions"] == "alpaca"


def test_shards_hold_at_most_the_limit_and_every_tensor_once():
    import torch

    shapes = {f"t{i}": torch.Size([1000 * (i % 7 + 1)]) for i in range(50)}
    shards = plan_shards(shapes, limit=20_000)
    assert [name for shard in shards for name in shard] == list(shapes)
    assert all(sum(2 * shapes[n].numel() for n in shard) <= 20_000 for shard in shards)


@pytest.mark.slow
def test_random_checkpoint_resolves_as_the_hub_download(tmp_path):
    if not assets.status().get("llama3-tokenizer"):
        pytest.skip("asset cache not filled: run `python -m llmq_core.assets fetch`")
    small = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
             "num_hidden_layers": 2}
    snapshot = build_checkpoint(tmp_path, "llama3-8b", seed=0, overrides=small)
    assert json.loads((snapshot / "config.json").read_text()) == {**PUBLISHED_CONFIGS["llama3-8b"], **small}
    index = json.loads((snapshot / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in snapshot.glob("*.safetensors")}
    # in a fresh process, as run_all's notebooks would: huggingface_hub reads HF_HUB_CACHE when imported
    check = ("from llmq_core.models import check_model_available, load_model\n"
             "check_model_available('llama3-8b')\n"
             "model, tokenizer = load_model('llama3-8b')\n"
             "print(model.config.vocab_size, model.config.rms_norm_eps, len(model.model.layers),"
             " tokenizer('Hello').input_ids[0], model.model.layers[1].mlp.down_proj.weight.std().item())\n")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    vocab, eps, layers, bos, std = out.stdout.split()
    assert (int(vocab), float(eps), int(layers), int(bos)) == (128256, 1e-5, 2, 128000)
    assert abs(float(std) - 0.02) < 0.002


def test_lora_ft_row_is_extrapolated_to_the_paper_schedule(tmp_path):
    config = next(c for c in sweep_configs(REHEARSAL) if c.method == "qlora")
    store = ResultStore(tmp_path / "results")
    report = {"prepare_time_s": 30.0, "finetune_time_s": 40.0, "finetune_peak_memory_mb": 20480.0}
    for target in config.targets():
        store.write({"key": config.record_key(target), "metrics": {}, "wall_time_s": 10.0, "peak_memory_mb": 1024.0,
                     "git_commit": "abcdef1234", "created": "2026-12-01T12:10:00+00:00", "quantization": report})
    runs = tmp_path / "runs"
    runs.mkdir()
    from run_all import run_slug

    (runs / f"{run_slug(config)}.ipynb").write_text(json.dumps(
        {"metadata": {"papermill": {"duration": 200.0, "start_time": "2026-12-01T12:00:00"}}}))
    values, evaluations = row(config, store, runs)
    per_step = 40.0 / config.options["steps"]
    assert values["quantize_s"] == pytest.approx(30.0 + per_step * 10000, abs=0.1)
    assert values["total_s"] == pytest.approx(200.0 + per_step * (10000 - config.options["steps"]), abs=0.1)
    assert values["evaluate_s"] == pytest.approx(10.0 * len(config.targets()))
    assert values["peak_gib"] == 20.0 and values["commit"] == "abcdef1"
    assert "extrapolated to 10000" in values["setting"]


def test_cost_counts_each_row_of_the_table_once():
    measured = {"rtn": {"total_s": 3600.0, "quantize_s": 1.0}, "qlora": {"total_s": 7200.0, "quantize_s": 3600.0}}
    rows = table_cost("llama3-8b", measured, rehearsed=[])
    assert len(rows) == len(sweep_configs(PAPER_SWEEP))
    by_method = {}
    for entry in rows:
        by_method.setdefault(entry["method"], []).append(entry["seconds"])
    assert by_method["rtn"] == [3600.0] * 7
    assert sorted(by_method["qlora"]) == [3600.0, 7200.0]  # NF4: QLoRA less its fine-tune
    assert all(s != s for s in by_method["gptq"])  # not measured: no number
