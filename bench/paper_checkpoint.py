"""LLaMA-3's published shapes as a hub-format checkpoint with seeded random bf16 weights: the paper's sweep
rehearsed where the real weights cannot be downloaded.

    python bench/paper_checkpoint.py --shape llama3-8b --hub-cache ~/rehearsal/hub     # 16 GB, about a minute
    HF_HUB_CACHE=~/rehearsal/hub HF_HUB_OFFLINE=1 python run_all.py --sweep sweeps/paper-llama3-8b.yaml

The folder is laid out as huggingface_hub lays out a download of meta-llama/Meta-Llama-3-8B (`refs/main`
naming a snapshot, `snapshots/<revision>/` holding the files), so `--model llama3-8b` resolves it by the same
code that resolves the real download: config.json with Meta's published values, LLaMA-3's tokenizer (the
`llama3-tokenizer` asset, from Meta's llama-models wheel) and safetensors shards of at most 5 GB with their
index, as on the hub. Each tensor is drawn on `--device` (N(0, 0.02), norms 1), and the host holds one shard at a
time, so the 70B shape needs its 141 GB on disk, not in memory.

The weights are random: every perplexity and accuracy measured on them means nothing; times and memory do.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmq_core.assets import asset_path  # noqa: E402
from llmq_core.models import MODELS  # noqa: E402

# config.json of meta-llama/Meta-Llama-3-8B and -70B as published on the hub
_LLAMA3 = dict(architectures=["LlamaForCausalLM"], attention_bias=False, attention_dropout=0.0,
               bos_token_id=128000, eos_token_id=128001, hidden_act="silu", initializer_range=0.02,
               max_position_embeddings=8192, model_type="llama", num_key_value_heads=8, pretraining_tp=1,
               rms_norm_eps=1e-05, rope_scaling=None, rope_theta=500000.0, tie_word_embeddings=False,
               torch_dtype="bfloat16", transformers_version="4.40.0.dev0", use_cache=True, vocab_size=128256)
PUBLISHED_CONFIGS: dict[str, dict[str, Any]] = {
    "llama3-8b": {**_LLAMA3, "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
                  "num_hidden_layers": 32},
    "llama3-70b": {**_LLAMA3, "hidden_size": 8192, "intermediate_size": 28672, "num_attention_heads": 64,
                   "num_hidden_layers": 80},
}
SHARD_BYTES = 5 * 10 ** 9  # the hub's shards of these models are at most 5 GB


def revision(shape: str, seed: int, overrides: dict[str, Any]) -> str:
    """A 40-hex snapshot name, as the hub's commit hashes, fixed by what the weights are drawn from."""
    return hashlib.sha1(json.dumps([shape, seed, overrides], sort_keys=True).encode()).hexdigest()


def plan_shards(shapes: dict[str, torch.Size], limit: int = SHARD_BYTES) -> list[list[str]]:
    """Tensor names in checkpoint order, cut greedily into shards of at most `limit` bf16 bytes."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        nbytes = 2 * shape.numel()
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def draw(name: str, shape: torch.Size, generator: torch.Generator, std: float) -> torch.Tensor:
    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=torch.bfloat16)
    device = generator.device
    return (torch.randn(shape, generator=generator, device=device, dtype=torch.bfloat16) * std).cpu()


def build_checkpoint(hub_cache: Path, shape: str = "llama3-8b", seed: int = 0, device: str = "cpu",
                     overrides: dict[str, Any] | None = None) -> Path:
    """Write the checkpoint into `hub_cache` as huggingface_hub would have downloaded it; returns the snapshot.
    `overrides` change published config values (a smaller model for a test); they name a snapshot of their own."""
    overrides = overrides or {}
    config = LlamaConfig(**{**PUBLISHED_CONFIGS[shape], **overrides})
    repo = hub_cache / f"models--{MODELS[shape].replace('/', '--')}"
    snapshot = repo / "snapshots" / revision(shape, seed, overrides)
    partial = snapshot.with_name(snapshot.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    with torch.device("meta"):
        shapes = {name: tensor.shape for name, tensor in LlamaForCausalLM(config).state_dict().items()}
    shards = plan_shards(shapes)
    generator = torch.Generator(device).manual_seed(seed)
    weight_map = {}
    for index, names in enumerate(shards, start=1):
        filename = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        tensors = {name: draw(name, shapes[name], generator, config.initializer_range) for name in names}
        save_file(tensors, partial / filename, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, filename))
        print(f"{filename}: {sum(t.numel() for t in tensors.values()) / 1e9:.2f}B parameters", flush=True)
    total = sum(2 * s.numel() for s in shapes.values())
    (partial / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (partial / "config.json").write_text(json.dumps({**PUBLISHED_CONFIGS[shape], **overrides}, indent=2))
    # the tokenizer as transformers wrote it, and Meta's tokenizer.model under original/ as on the hub
    shutil.copytree(asset_path("llama3-tokenizer"), partial, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(".*"))
    (partial / "README.md").write_text(
        f"Random bf16 weights in {MODELS[shape]}'s published shape (seed {seed}), written by "
        "bench/paper_checkpoint.py to rehearse the paper's sweep. Not Meta's weights: quality numbers mean nothing.\n")
    shutil.rmtree(snapshot, ignore_errors=True)
    partial.rename(snapshot)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(snapshot.name)
    return snapshot


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=PUBLISHED_CONFIGS, default="llama3-8b")
    parser.add_argument("--hub-cache", type=Path, required=True, help="the folder HF_HUB_CACHE will name")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the weights are drawn (a GPU draws 8B parameters in seconds)")
    parser.add_argument("--layers", type=int, help="decoder blocks (default: the published number)")
    args = parser.parse_args(argv)
    overrides = {"num_hidden_layers": args.layers} if args.layers else {}
    snapshot = build_checkpoint(args.hub_cache.expanduser(), args.shape, args.seed, args.device, overrides)
    print(f"{snapshot}\nuse it with: export HF_HUB_CACHE={args.hub_cache} HF_HUB_OFFLINE=1; "
          f"--model {args.shape}")


if __name__ == "__main__":
    main()
