"""A model larger than the GPU: GPTQ with one block on the GPU at a time, then evaluation over device_map="auto".

    python bench/big_model.py --shape llama3-8b --gpu-gib 8        # one GPU, capped below the model's size
    python bench/big_model.py --shape llama3-70b --layers 96 --quantize-blocks 8   # 157 GiB: more than an H200
    python bench/big_model.py --shape tiny --device cpu            # the code path on a CPU (tests)

The model has random bf16 weights and is built in CPU memory; each tensor is drawn on the GPU and copied
back. It is then quantized with GPTQ (4 bits, group 128, `--nsamples` random windows of 2048 tokens),
the weights held in CPU memory and one block at a time on the first GPU (`models.offload_to`);
`--quantize-blocks N` quantizes only the first N blocks (a reduced run, said so in the table: GPTQ goes block
by block in order, so its time per block is that of the whole run). After that the model
is placed with accelerate's device_map="auto" over the visible GPUs (`models.place_for_evaluation`), with
what does not fit left in CPU memory, and its perplexity is measured on random tokens. `--gpu-gib` caps each
GPU (torch's per-process memory fraction), so that a machine whose host has less memory than its GPU (a
single-H200 node with 128 GiB beside 140) can show a model larger than its GPU; the two-GPU machine (256 GiB) holds a
157 GiB model uncapped. The table gives wall times, the peak memory on each GPU, and where the blocks went.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from paper_scale import SHAPES  # noqa: E402
from timing import measured  # noqa: E402

from llmq_core.eval.perplexity import perplexity  # noqa: E402
from llmq_core.methods import QuantSpec, get_method  # noqa: E402
from llmq_core.models import offload_to, place_for_evaluation, weight_bytes  # noqa: E402
from llmq_core.results import git_commit  # noqa: E402


def random_model_in_cpu_memory(config: LlamaConfig, draw_on: str, seed: int = 0) -> LlamaForCausalLM:
    """bf16 weights ~ N(0, 0.02) (norms 1) in CPU memory, each tensor drawn on `draw_on`: the CPU's own
    initialisation of 100B parameters would take longer than the benchmark."""
    with torch.device("meta"):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.to_empty(device="cpu")
    generator = torch.Generator(draw_on).manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.fill_(1.0)
            else:
                parameter.copy_(torch.randn(parameter.shape, generator=generator, device=draw_on,
                                            dtype=torch.bfloat16) * config.initializer_range)
    model.model.rotary_emb = type(model.model.rotary_emb)(config)  # its buffers were left empty by to_empty
    return model.eval()


@contextmanager
def first_blocks_only(model: LlamaForCausalLM, count: int | None) -> Iterator[LlamaForCausalLM]:
    """The model with only its first `count` decoder blocks (all for None), whole again afterwards."""
    blocks, layers = model.model.layers, model.config.num_hidden_layers
    if count is not None:
        model.model.layers, model.config.num_hidden_layers = blocks[:count], min(count, layers)
    try:
        yield model
    finally:
        model.model.layers, model.config.num_hidden_layers = blocks, layers


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2 ** 30:.1f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shape", choices=SHAPES, default="llama3-8b")
    parser.add_argument("--layers", type=int, help="decoder blocks (default: the shape's)")
    parser.add_argument("--gpu-gib", dest="gpu_gib", type=float, help="cap each GPU at this much memory")
    parser.add_argument("--nsamples", type=int, default=128, help="GPTQ calibration windows of 2048 tokens")
    parser.add_argument("--quantize-blocks", dest="quantize_blocks", type=int,
                        help="GPTQ on the first N blocks only (default: all), for a model too large to quantize whole "
                             "in the time at hand")
    parser.add_argument("--ppl-windows", dest="ppl_windows", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--markdown", type=Path, help="also write the table here, with date, device and commit")
    args = parser.parse_args(argv)
    config = LlamaConfig(**{**SHAPES[args.shape], **({"num_hidden_layers": args.layers} if args.layers else {})})
    cuda = args.device.startswith("cuda")
    gpus = list(range(torch.cuda.device_count())) if cuda else []
    for gpu in gpus if args.gpu_gib else []:
        total = torch.cuda.get_device_properties(gpu).total_memory
        torch.cuda.set_per_process_memory_fraction(args.gpu_gib * 2 ** 30 / total, gpu)

    model, build_seconds, _ = measured(args.device, lambda: random_model_in_cpu_memory(config, args.device))
    device = f"{len(gpus)} x {torch.cuda.get_device_name()}" if cuda else "cpu"
    cap = f", capped at {args.gpu_gib:g} GiB each" if args.gpu_gib else ""
    lines = []

    def report_line(*new_lines: str) -> None:  # printed as measured: a later step that fails loses nothing
        lines.extend(new_lines)
        print("\n".join(new_lines), flush=True)

    report_line(f"{args.shape} shape, {config.num_hidden_layers} blocks: {gib(weight_bytes(model))} GiB of bf16 "
                f"weights; {device}{cap}", "", "| step | wall s | peak GiB per GPU | where |", "|---|---|---|---|",
                f"| random weights in CPU memory | {build_seconds:.0f} | - | cpu |")

    def peaks() -> str:
        return " / ".join(gib(torch.cuda.max_memory_allocated(gpu)) for gpu in gpus) if gpus else "-"

    calibration = torch.randint(0, config.vocab_size, (args.nsamples, args.seqlen))
    compute = f"cuda:{gpus[0]}" if gpus else "cpu"
    offload_to(model, compute)
    for gpu in gpus:
        torch.cuda.reset_peak_memory_stats(gpu)
    with first_blocks_only(model, args.quantize_blocks) as quantized:
        quantized_blocks = quantized.config.num_hidden_layers
        report, seconds, _ = measured(args.device, lambda: get_method("gptq").quantize(
            quantized, QuantSpec(wbits=4, group_size=128), calibration))
    which = "every block" if quantized_blocks == config.num_hidden_layers else \
        f"the first {quantized_blocks} of {config.num_hidden_layers} blocks only (a reduced run)"
    report_line(f"| GPTQ w4 g128 of {which}, {args.nsamples} x {args.seqlen} tokens, one block at a time | "
                f"{seconds:.0f} ({seconds / quantized_blocks:.1f} a block) | {peaks()} | weights in CPU memory, "
                f"each block on {compute} for its turn |")

    # Under a cap, the blocks get what the cap leaves after what is held now (cuBLAS workspaces, CUDA graph pools)
    # and after room for a window's activations and fp32 logits: accelerate counts weights only (an 8 GiB cap
    # filled with blocks ran out of memory on the H200).
    torch.cuda.empty_cache()
    reserve = 4 * args.seqlen * (config.vocab_size + 8 * config.intermediate_size) * 2
    cap_each = {**{gpu: int(args.gpu_gib * 2 ** 30) - torch.cuda.memory_allocated(gpu) - reserve for gpu in gpus},
                "cpu": "1000GiB"} if args.gpu_gib else None
    placed = place_for_evaluation(model, max_memory=cap_each)
    blocks = Counter(str(where) for name, where in placed.hf_device_map.items() if ".layers." in f".{name}.")
    if not blocks:  # a map that places whole submodules (e.g. all of `model`) names no block
        blocks = Counter({str(where): config.num_hidden_layers for where in set(placed.hf_device_map.values())})
    for gpu in gpus:
        torch.cuda.reset_peak_memory_stats(gpu)
    tokens = torch.randint(0, config.vocab_size, (1, args.ppl_windows * args.seqlen))
    ppl, seconds, _ = measured(args.device, lambda: perplexity(placed, tokens, args.seqlen, progress=False))
    where = ", ".join(f"{count} blocks on {name if name == 'cpu' else 'GPU ' + name}" for name, count in blocks.items())
    report_line(f"| perplexity, {args.ppl_windows} x {args.seqlen} tokens, device_map=\"auto\" | {seconds:.0f} "
                 f"({tokens.numel() / seconds:,.0f} tokens/s) | {peaks()} | {where} |")
    report_line("", f"GPTQ loss total {report['gptq_loss_total']:.3g}; perplexity of random tokens {ppl:.4g} "
                f"(random weights: a check that it is finite, not a quality)")
    if args.markdown:
        header = f"# bench/big_model.py, {date.today()}, {device}, commit {git_commit()}\n\n"
        args.markdown.write_text(header + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
