"""A local mirror of the four hub datasets the seed repository loads, holding the offline stand-ins.

Offline, `datasets` never reads the hub's file cache: `dataset_module_factory` raises OfflineModeIsEnabled
before any `hf_hub_download` and falls back to `CachedDatasetModuleFactory`, whose `cache` builder
(`_find_hash_in_cache`) serves what a first online load prepared under HF_DATASETS_CACHE, in
`<namespace>___<name>/<config id>/<version>/<hash>/`. So `datasets` itself prepares each dataset here,
from a local copy of its hub repository, and the result is given the names a hub load would give it:

    DIR/hub/<repo id>/  the hub's layout (parquet; C4's json.gz shard), a README.md card naming the stand-in
    DIR/datasets/       HF_DATASETS_CACHE. A local folder has no namespace, so `c4` is renamed `allenai___c4`;
                        C4's config id is hashed from `data_files` as data.py writes them, as the offline
                        lookup does, not from the resolved files, as preparing does (datasets issue #7551)

It must stay writable (loading takes a lock file in it); other datasets loaded meanwhile are cached there.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shlex
import shutil
import sys
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from llmq_core.assets import asset_path
from llmq_core.data import C4_VALIDATION_SHARD
from llmq_core.errors import LlmqError

# A Brown sample is about 2,000 words, but the asset keeps no file boundaries: a C4 stand-in document is
# a run of whole paragraphs of at least this many words, which is over 2,048 LLaMA-3 tokens.
C4_DOCUMENT_WORDS = 2000
STAND_INS = {  # the card's text and each dataset's info.description
    "wikitext": "NOT WikiText-2: the asset `enwiki-excerpt` (206 Wikipedia articles), a paragraph a row, so that a "
                "split joined with \"\\n\\n\" is the asset's text; validation repeats test (the asset has two splits).",
    "allenai/c4": f"NOT C4: the asset `brown`'s test text (the Brown corpus) as the one shard {C4_VALIDATION_SHARD}, "
                  f"a line per run of paragraphs of {C4_DOCUMENT_WORDS}+ words; timestamp and url are empty.",
    "ptb_text_only": "The real Penn Treebank (Mikolov's splits) from the asset `ptb`, a sentence a row.",
    "tatsu-lab/alpaca": "NOT Alpaca: the asset `sharegpt`, the first exchange of each complete ShareGPT conversation, "
                        "with an empty input and Alpaca's prompt format as text.",
}
ALPACA_TEXT = ("Below is an instruction that describes a task. Write a response that appropriately completes "
               "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n{output}")


def brown_documents(text: str, min_words: int = C4_DOCUMENT_WORDS) -> list[str]:
    """Consecutive paragraphs ("\\n\\n"-separated) grouped into documents of at least `min_words` words."""
    documents, current, words = [], [], 0
    for paragraph in text.strip().split("\n\n"):
        current.append(paragraph)
        words += len(paragraph.split())
        if words >= min_words:
            documents.append("\n\n".join(current))
            current, words = [], 0
    if current:  # a short tail joins the last document
        documents[-1:] = ["\n\n".join(documents[-1:] + current)]
    return documents


def _parquet(path: Path, columns: dict[str, list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def _card(repo: Path, repo_id: str, config: str = "", folder: str = "", splits: tuple[str, ...] = ()) -> None:
    """The README.md dataset card; its YAML `configs` give `datasets` the config and split names."""
    files = "".join(f"  - split: {split}\n    path: {folder}/{split}-*\n" for split in splits)
    configs = f"configs:\n- config_name: {config}\n  data_files:\n{files}" if config else ""
    (repo / "README.md").write_text(f"---\npretty_name: {repo_id} (offline stand-in)\n{configs}---\n"
                                    f"# {repo_id}: an offline stand-in\n\n{STAND_INS[repo_id]}\n")


def _write_repos(hub: Path) -> None:
    """The four repositories in their hub layouts, with the hub's config, split and column names."""
    enwiki, ptb = asset_path("enwiki-excerpt"), asset_path("ptb")
    for split, enwiki_file, ptb_file in [("train", "train", "train"), ("validation", "test", "valid"),
                                         ("test", "test", "test")]:
        rows = (enwiki / f"{enwiki_file}.txt").read_text().split("\n\n")
        _parquet(hub / f"wikitext/wikitext-2-raw-v1/{split}-00000-of-00001.parquet", {"text": rows})
        sentences = (ptb / f"{ptb_file}.txt").read_text().splitlines()
        _parquet(hub / f"ptb_text_only/penn_treebank/{split}-00000-of-00001.parquet", {"sentence": sentences})
    splits = ("train", "validation", "test")
    _card(hub / "wikitext", "wikitext", "wikitext-2-raw-v1", "wikitext-2-raw-v1", splits)
    _card(hub / "ptb_text_only", "ptb_text_only", "penn_treebank", "penn_treebank", splits)

    shard = hub / "allenai/c4" / C4_VALIDATION_SHARD
    shard.parent.mkdir(parents=True)
    with gzip.open(shard, "wt", encoding="utf-8") as f:
        for document in brown_documents((asset_path("brown") / "test.txt").read_text()):
            f.write(json.dumps({"text": document, "timestamp": "", "url": ""}) + "\n")
    _card(hub / "allenai/c4", "allenai/c4")  # no configs: data.py names the shard, so its config is "default"

    pairs = [json.loads(line) for line in (asset_path("sharegpt") / "train.jsonl").read_text().splitlines()]
    columns = {key: [pair[key] for pair in pairs] for key in ("instruction", "input", "output")}
    columns["text"] = [ALPACA_TEXT.format(**pair) for pair in pairs]
    _parquet(hub / "tatsu-lab/alpaca/data/train-00000-of-00001.parquet", columns)
    _card(hub / "tatsu-lab/alpaca", "tatsu-lab/alpaca", "default", "data", ("train",))


def _prepare(repo: Path, repo_id: str, cache: Path, config_name: str | None = None,
             data_files: dict[str, str] | None = None) -> None:
    """Prepare one repository into the cache where `load_dataset(repo_id, config_name, data_files=...)` looks."""
    config_kwargs = {"data_files": data_files} if data_files else {}
    # _find_hash_in_cache's id for this call: the config name, or "default-<hash of data_files>"
    config_id = datasets.BuilderConfig(config_name or "default").create_config_id(config_kwargs)
    builder = datasets.load_dataset_builder(str(repo), config_name, cache_dir=str(cache), config_id=config_id,
                                            **config_kwargs)
    builder.info.description = f"offline stand-in for {repo_id}: {STAND_INS[repo_id]}"
    builder.download_and_prepare()
    folder = cache / repo_id.replace("/", "___")  # a hub load's name (DatasetBuilder._relative_data_dir)
    if "/" in repo_id:
        (cache / repo_id.split("/")[-1]).rename(folder)
    shutil.copy(repo / "README.md", folder / "README.md")


def build_mirror(out: Path, force: bool = False) -> dict[str, str]:
    """Build the mirror in `out` (atomically, via out.partial); the environment variables that select it."""
    out = out.expanduser().resolve()
    if out.exists() and not force and not (out.is_dir() and not any(out.iterdir())):
        raise LlmqError(f"{out} exists and is not an empty folder; choose another --out or pass --force")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        hub, cache = partial / "hub", partial / "datasets"
        _write_repos(hub)
        _prepare(hub / "wikitext", "wikitext", cache, "wikitext-2-raw-v1")
        _prepare(hub / "ptb_text_only", "ptb_text_only", cache, "penn_treebank")
        _prepare(hub / "allenai/c4", "allenai/c4", cache, data_files={"validation": C4_VALIDATION_SHARD})
        _prepare(hub / "tatsu-lab/alpaca", "tatsu-lab/alpaca", cache)
        for lock in cache.rglob("*.lock"):  # left by preparing; loading takes its own
            lock.unlink()
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.is_dir():
        shutil.rmtree(out)
    out.unlink(missing_ok=True)  # --force on a file
    partial.rename(out)
    # Both flags, whatever the shell had: datasets reads HF_DATASETS_OFFLINE first, huggingface_hub HF_HUB_OFFLINE.
    return {"HF_DATASETS_CACHE": str(out / "datasets"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmq_core.hub_mirror", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="a new or empty folder for the mirror")
    parser.add_argument("--force", action="store_true", help="replace --out even if it is not empty")
    args = parser.parse_args(argv)
    try:
        env = build_mirror(args.out, force=args.force)
    except LlmqError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("export " + " ".join(f"{key}={shlex.quote(value)}" for key, value in env.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
