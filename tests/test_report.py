import math

from llmq_core.config import RunConfig
from llmq_core.report import best_records, evaluations_table, ptq_table, to_markdown


def record(config: RunConfig, target: str, value: float, device: str = "cpu") -> dict:
    key = config.record_key(target)
    metrics = {"ppl": value} if key["kind"] == "perplexity" else {"acc": value}
    return {"key": key, "metrics": metrics, "device": device}


def test_a_full_evaluation_is_preferred_over_a_limited_one():
    limited = RunConfig(method="rtn", wbits=4, group_size=128, limit=50, ppl_windows=8, seqlen=512)
    full = RunConfig(method="rtn", wbits=4, group_size=128, seqlen=512)
    chosen = best_records([record(limited, "ptb", 30.0), record(full, "ptb", 25.0, "H100"),
                           record(limited, "piqa", 0.6)])
    assert sorted((r["key"]["target"], r["key"]["limit"]) for r in chosen) == [("piqa", 50), ("ptb", None)]


def test_table_has_the_paper_columns_eval_sizes_and_the_paper_number_for_llama3():
    tasks = ["piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande"]
    ours = RunConfig(model="smollm2-135m", method="rtn", wbits=4, group_size=128, limit=50, ppl_windows=8, seqlen=512)
    llama = RunConfig(model="llama3-8b", method="rtn", wbits=4, group_size=128, data="hub", seqlen=2048,
                      datasets=["wikitext2"], tasks=[])
    records = [record(ours, t, 0.5) for t in ["enwiki-excerpt", "brown", "ptb", *tasks]]
    records.append(record(llama, "wikitext2", 8.4, "NVIDIA H100"))
    table = ptq_table(records).set_index("model")
    assert list(table.columns[:5]) == ["method", "wbits", "abits", "group_size", "options"]
    small = table.loc["smollm2-135m"]
    assert small["piqa"] == 50.0 and small["avg"] == 50.0
    assert small["task_eval"] == "limit=50" and small["ppl_eval"] == "8 windows x 512"
    big = table.loc["LLaMA3-8B"]
    assert big["wikitext2"] == 8.4 and big["paper_wikitext2"] == 8.5 and big["device"] == "NVIDIA H100, float32"
    assert math.isnan(small["paper_wikitext2"])
    assert "| RTN | 4.0 |" in to_markdown(table.reset_index()) or "| RTN | 4 |" in to_markdown(table.reset_index())


def test_the_gpu_full_sweep_replaces_the_cpu_quick_row_and_both_stay_in_the_evaluations_table():
    quick = RunConfig(method="rtn", wbits=3, limit=50, ppl_windows=8, seqlen=512, device="cpu")
    full = RunConfig(method="rtn", wbits=3, seqlen=2048, device="cuda")  # bf16: another record key
    records = [record(quick, "ptb", 400.0, "cpu (x86_64, 2 threads)"), record(full, "ptb", 300.0, "NVIDIA H100"),
               record(quick, "piqa", 0.60, "cpu (x86_64, 2 threads)"), record(full, "piqa", 0.56, "NVIDIA H100")]
    table = ptq_table(records)
    assert len(table) == 1
    row = table.iloc[0]
    assert row["ptb"] == 300.0 and math.isclose(row["piqa"], 56.0)
    assert (row["ppl_eval"], row["task_eval"], row["device"]) == ("full x 2048", "full", "NVIDIA H100, bfloat16")
    both = evaluations_table(records)
    assert sorted(both["ptb"]) == [300.0, 400.0] and sorted(both["task_eval"]) == ["full", "limit=50"]


def test_a_full_text_at_a_shorter_window_still_beats_a_limited_one_and_longer_windows_break_ties():
    short_full = RunConfig(method="rtn", wbits=4, seqlen=512)
    long_limited = RunConfig(method="rtn", wbits=4, seqlen=2048, ppl_windows=8)
    long_full = RunConfig(method="rtn", wbits=4, seqlen=2048)
    chosen = best_records([record(long_limited, "ptb", 1.0), record(short_full, "ptb", 2.0)])
    assert chosen[0]["metrics"]["ppl"] == 2.0
    chosen = best_records([record(short_full, "ptb", 2.0), record(long_full, "ptb", 3.0)])
    assert chosen[0]["metrics"]["ppl"] == 3.0


def test_a_method_option_is_its_own_row_and_gets_no_paper_number():
    default = RunConfig(model="llama3-8b", method="smoothquant", wbits=8, abits=8, data="hub", datasets=["wikitext2"],
                        tasks=[])
    unsmoothed = RunConfig(**{**default.to_dict(), "options": {"smoothing": False}})
    table = ptq_table([record(default, "wikitext2", 6.3), record(unsmoothed, "wikitext2", 9.0)])
    rows = table.set_index("options")
    assert rows.loc["", "wikitext2"] == 6.3 and rows.loc["", "paper_wikitext2"] == 6.3
    assert rows.loc["smoothing=False", "wikitext2"] == 9.0 and math.isnan(rows.loc["smoothing=False", "paper_wikitext2"])
