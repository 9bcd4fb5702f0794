"""The cost of the study at LLaMA-3-8B's shape: quantization, a peer's GPTQ, and evaluation, in one run.

    python bench/paper_scale.py --device cuda --markdown bench/RESULTS.md   # the 8B shape, bf16 (a GPU)
    python bench/paper_scale.py --shape tiny --methods rtn gptq             # a small stand-in (CPU, tests)

Quantization and evaluation cost do not depend on the weights' values, so the model is LLaMA-3-8B's
configuration with random weights, and calibration is random tokens, as many as the paper's full sweep
uses per method (128 x 2048; AWQ 128 x 512 and SmoothQuant 512 x 512, as in their reference code).
Each method quantizes a freshly initialised model; its end-to-end wall time and peak GPU memory are
printed with their ratio to RTN's, measured in the same run. The peer is llm-compressor's GPTQ
(W4A16, group 128) on the same model and calibration, printed as ours/theirs against our GPTQ g128;
it runs where `llmcompressor` imports (`pip install llmcompressor`; 0.14.0.1 asks for transformers <= 5.17).
Evaluation: perplexity tokens/s at seqlen 2048 and its share of the GPU's dense bf16 peak (2 FLOP
per weight of the blocks and the head, per token), and lm-eval's five tasks in full through our
ContinuationHFLM, with the embedded model's tokenizer (49,152 ids, all valid for the 128,256-row
embedding). The last column is each method's share of the quick CPU sweep (sweeps/quick.yaml) as
its stored records took it on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import date
from pathlib import Path

import torch
import yaml
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timing import measured  # noqa: E402

from llmq_core.eval.perplexity import GPU_BATCH_SIZE, perplexity  # noqa: E402
from llmq_core.eval.tasks import TASKS  # noqa: E402
from llmq_core.eval.zeroshot import run_lm_eval  # noqa: E402
from llmq_core.config import RunConfig  # noqa: E402
from llmq_core.methods import get_method  # noqa: E402
from llmq_core.models import resolve_model  # noqa: E402
from llmq_core.results import ResultStore, git_commit  # noqa: E402

SHAPES = {  # LLaMA-3-8B's and 70B's config.json, and a stand-in small enough for a CPU test
    "llama3-8b": dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=14336, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192),
    "llama3-70b": dict(hidden_size=8192, num_hidden_layers=80, intermediate_size=28672, num_attention_heads=64,
                       num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192),
    "tiny": dict(hidden_size=256, num_hidden_layers=2, intermediate_size=512, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=49152, max_position_embeddings=2048),
}
# The headline setting of each method, with the full sweep's calibration sizes (sweeps/full.yaml)
SETTINGS = {
    "rtn": dict(method="rtn", wbits=4, group_size=128),
    "gptq": dict(method="gptq", wbits=4, group_size=128),
    "gptq-act-order": dict(method="gptq", wbits=4, group_size=128, options={"act_order": True, "static_groups": True}),
    "awq": dict(method="awq", wbits=4, group_size=128, calib_seqlen=512),
    "quip": dict(method="quip", wbits=2),
    "smoothquant": dict(method="smoothquant", wbits=8, abits=8, nsamples=512, calib_seqlen=512),
    "pbllm": dict(method="pbllm", wbits=1.7, group_size=128),
    "billm": dict(method="billm", wbits=1.1, group_size=128),
    "dbllm": dict(method="dbllm", wbits=2, group_size=128),
}


def quick_sweep_seconds() -> dict[str, float]:
    """Each method's quick-sweep configurations, as stored: quantization once each plus every evaluation's wall time."""
    sweep, store, seconds = yaml.safe_load((ROOT / "sweeps" / "quick.yaml").read_text()), ResultStore(), {}
    for entry in sweep["configs"]:
        config = RunConfig(**{**sweep["defaults"], **entry})
        records = [r for r in (store.get(config.record_key(t)) for t in config.targets()) if r is not None]
        if records:
            quantize = records[0].get("quantization", {}).get("quantize_time_s", 0.0)
            seconds[config.method] = seconds.get(config.method, 0.0) + quantize + sum(r["wall_time_s"] for r in records)
    return seconds


def build_model(shape: str, layers: int | None, device: str, seed: int = 0) -> LlamaForCausalLM:
    """Random weights, initialised on `device` in bf16 (fp32 on CPU), the same for the same seed."""
    config = LlamaConfig(**{**SHAPES[shape], **({"num_hidden_layers": layers} if layers else {})})
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16 if device.startswith("cuda") else torch.float32)
    return model.eval()


def quantize_once(name: str, args: argparse.Namespace) -> tuple[float, float]:
    config = RunConfig(device=args.device, **SETTINGS[name])
    model = build_model(args.shape, args.layers, args.device)
    method = get_method(config.method)
    calibration = (torch.randint(0, model.config.vocab_size, (config.nsamples, config.calib_seqlen))
                   if method.needs_calibration else None)
    return measured(args.device, lambda: method.quantize(model, config.spec, calibration))[1:]


def peer_gptq(args: argparse.Namespace) -> tuple[float, float]:
    """llm-compressor's GPTQ, W4A16 group 128 on every Linear but the head, 128 x 2048 random tokens."""
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier

    model = build_model(args.shape, args.layers, args.device)
    model.config._name_or_path = tempfile.mkdtemp()  # it reads the model's config.json back from where it came from
    model.config.save_pretrained(model.config._name_or_path)
    tokens = torch.randint(0, model.config.vocab_size, (128, 2048))
    data = Dataset.from_dict({"input_ids": tokens.tolist(), "attention_mask": torch.ones_like(tokens).tolist()})
    recipe = GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"])
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))  # it asks for one; data is tokenized
    return measured(args.device, lambda: oneshot(model=model, processor=tokenizer, dataset=data, recipe=recipe,
                                                 max_seq_length=2048, num_calibration_samples=128))[1:]


def share_of_peak(model: LlamaForCausalLM, tokens_per_s: float, peak_tflops: float) -> float:
    """The forward's FLOP rate as a share of the GPU's dense peak: 2 FLOP per token for each weight a token
    multiplies, the blocks' and the head's (not the embedding, which is looked up)."""
    weights = sum(p.numel() for p in model.model.layers.parameters()) + model.lm_head.weight.numel()
    return 2 * weights * tokens_per_s / (peak_tflops * 1e12)


def evaluation(args: argparse.Namespace) -> list[tuple[str, str]]:
    model = build_model(args.shape, args.layers, args.device)
    tokens = torch.randint(0, model.config.vocab_size, (1, args.ppl_windows * 2048))
    perplexity(model, tokens[:, :2048 * GPU_BATCH_SIZE], 2048, progress=False)  # warm-up (on a GPU, compiling)
    _, seconds, _ = measured(args.device, lambda: perplexity(model, tokens, 2048, progress=False))
    rate = tokens.numel() / seconds
    rows = [("perplexity, tokens/s at 2048", f"{rate:,.0f}"),
            ("perplexity, share of bf16 peak", f"{share_of_peak(model, rate, args.peak_tflops):.0%} of "
                                               f"{args.peak_tflops:g} TFLOP/s")]
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    _, seconds, memory = measured(args.device, lambda: run_lm_eval(model, tokenizer, [f"llmq_{t}" for t in TASKS],
                                                                args.limit, args.batch_size))
    rows.append((f"lm-eval, five tasks ({'all' if args.limit is None else args.limit} docs each), s",
                 f"{seconds:.0f} (peak {memory:.1f} GiB)"))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", choices=SHAPES, default="llama3-8b")
    parser.add_argument("--layers", type=int, help="decoder blocks (default: the shape's)")
    parser.add_argument("--methods", nargs="*", default=list(SETTINGS), choices=[*SETTINGS, "peer", "eval"])
    parser.add_argument("--ppl-windows", dest="ppl_windows", type=int, default=16)
    parser.add_argument("--limit", type=int, help="lm-eval documents per task (default: all)")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=64)
    parser.add_argument("--peak-tflops", dest="peak_tflops", type=float, default=790.0,
                        help="dense bf16 peak of the GPU (790: measured on an H100 and an H200)")
    parser.add_argument("--markdown", type=Path, help="also write the table here, with date, device and commit")
    args = parser.parse_args(argv)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    layers = args.layers or SHAPES[args.shape]["num_hidden_layers"]
    lines: list[str] = []

    def emit(*texts: str) -> None:  # printed as measured, so that a run cut short has shown what it finished
        lines.extend(texts)
        print("\n".join(texts), flush=True)

    emit(f"{args.shape} shape ({layers} blocks), random weights, on {device}", "",
         "| method | setting | wall s | vs RTN | peak GiB | quick CPU sweep s |", "|---|---|---|---|---|---|")
    times, quick = {}, quick_sweep_seconds()
    for name in [m for m in args.methods if m in SETTINGS] + (["peer"] if "peer" in args.methods else []):
        setting = "llm-compressor GPTQ W4A16 g128" if name == "peer" else \
            ", ".join(f"{k}={v}" for k, v in SETTINGS[name].items() if k != "method")
        try:
            seconds, memory = peer_gptq(args) if name == "peer" else quantize_once(name, args)
        except Exception as error:  # a method that fails here (memory, a missing peer) leaves the others
            emit(f"| {name} | {setting} | failed: {type(error).__name__}: {str(error).splitlines()[0][:100]} | | | |")
            continue
        times[name] = seconds
        ratio = f"{seconds / times['rtn']:.1f}x" if "rtn" in times else "-"
        stored = f"{quick[name]:.0f}" if name in quick else "-"  # gptq-act-order and the peer are not in it
        emit(f"| {name} | {setting} | {seconds:.1f} | {ratio} | {memory:.1f} | {stored} |")
    if "peer" in times and "gptq" in times:
        emit("", f"GPTQ g128, ours/theirs wall time: {times['gptq'] / times['peer']:.2f}")
    if "eval" in args.methods:
        emit("", "| evaluation | measured |", "|---|---|")
        for name, value in evaluation(args):
            emit(f"| {name} | {value} |")
    if args.markdown:
        header = f"# bench/paper_scale.py, {date.today()}, {device}, commit {git_commit()}\n\n"
        args.markdown.write_text(header + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
