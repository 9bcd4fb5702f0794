"""The offline LLaMA-3 tokenizer (asset llama3-tokenizer) against facts published by Meta and on the hub.

Expected ids come from Meta's own tests, llama_models/llama3/tests/api/test_tokenizer.py in
llama_models-0.3.0-py3-none-any.whl (the same ids as llama/test_tokenizer.py of meta-llama/llama3);
special-token names and ids from llama/tokenizer.py of meta-llama/llama3; the configuration from
tokenizer_config.json of meta-llama/Meta-Llama-3-8B on the hub.
"""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from llmq_core import assets
from llmq_core.assets import asset_path

# Meta's split regex, quoted from Tokenizer.pat_str in llama_models/llama3/tokenizer.py.
META_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SENTENCE_IDS = [2028, 374, 264, 1296, 11914, 13]  # "This is a test sentence." in Meta's tests
BOS, EOS, START_HEADER, END_HEADER, EOT = 128000, 128001, 128006, 128007, 128009
ROUND_TRIPS = ["Hello, world!", "  two leading spaces and three trailing   ", "tabs\t\tand\n\n\nnewlines\r\n",
               "naïve café, Ærøskøbing, Straße", "日本語のテキストと中文", "emoji 🦙🦙 and ZWJ 👩‍💻",
               "مرحبا بالعالم", "e\u0301 combining accent", "x = [i**2 for i in range(10)]  # code",
               "1234567890 3.14159", " " * 40, "\n", ""]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    if not assets.status().get("llama3-tokenizer"):
        pytest.skip("asset cache not filled: run `python -m llmq_core.assets fetch`")
    return AutoTokenizer.from_pretrained(asset_path("llama3-tokenizer"))


def test_metas_encode_and_decode_cases(tokenizer):
    # Meta's encode(..., bos=True, eos=True): the hub tokenizer adds the BOS itself, never the EOS.
    assert tokenizer("This is a test sentence.").input_ids + [tokenizer.eos_token_id] == [BOS, *SENTENCE_IDS, EOS]
    assert (tokenizer.decode([BOS, *SENTENCE_IDS, EOS])
            == "<|begin_of_text|>This is a test sentence.<|end_of_text|>")


def test_metas_chat_format_cases(tokenizer):
    # ChatFormat writes header tokens, role, "\n\n", the content and <|eot_id|>; as text they are the same ids.
    message = "<|start_header_id|>user<|end_header_id|>\n\nThis is a test sentence.<|eot_id|>"
    assert (tokenizer(message, add_special_tokens=False).input_ids
            == [START_HEADER, 882, END_HEADER, 271, *SENTENCE_IDS, EOT])
    dialog = ("<|start_header_id|>system<|end_header_id|>\n\nThis is a test sentence.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nThis is a response.<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert tokenizer(dialog).input_ids == [
        BOS, START_HEADER, 9125, END_HEADER, 271, *SENTENCE_IDS, EOT,
        START_HEADER, 882, END_HEADER, 271, 2028, 374, 264, 2077, 13, EOT,
        START_HEADER, 78191, END_HEADER, 271]


def test_special_tokens_have_metas_names_and_ids(tokenizer):
    expected = {"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|reserved_special_token_0|>": 128002,
                "<|reserved_special_token_1|>": 128003, "<|reserved_special_token_2|>": 128004,
                "<|reserved_special_token_3|>": 128005, "<|start_header_id|>": 128006,
                "<|end_header_id|>": 128007, "<|reserved_special_token_4|>": 128008, "<|eot_id|>": 128009,
                "<|reserved_special_token_5|>": 128010, "<|reserved_special_token_250|>": 128255}
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in expected} == expected
    assert (tokenizer.bos_token, tokenizer.bos_token_id, tokenizer.eos_token, tokenizer.eos_token_id) == (
        "<|begin_of_text|>", BOS, "<|end_of_text|>", EOS)
    # All 256 are special: decoding drops them.
    assert tokenizer.decode(list(range(128000, 128256)), skip_special_tokens=True) == ""


def test_vocabulary_is_128000_ranks_and_256_special_tokens(tokenizer):
    assert tokenizer.vocab_size == 128_000
    assert len(tokenizer) == 128_256
    assert sorted(tokenizer.get_vocab().values()) == list(range(128_256))


def test_configuration_is_the_hubs(tokenizer):
    # transformers 5 calls PreTrainedTokenizerFast, the hub's tokenizer_class, TokenizersBackend.
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert tokenizer.model_max_length == 1000000000000000019884624838656
    assert tokenizer.model_input_names == ["input_ids", "attention_mask"]
    config = json.loads((asset_path("llama3-tokenizer") / "tokenizer_config.json").read_text())
    assert config["clean_up_tokenization_spaces"] is True
    assert (config["bos_token"], config["eos_token"]) == ("<|begin_of_text|>", "<|end_of_text|>")


@pytest.mark.parametrize("text", ROUND_TRIPS + ["one sentence. Another one? Yes!"])
def test_each_encoding_starts_with_exactly_one_bos_and_has_no_eos(tokenizer, text):
    ids = tokenizer(text).input_ids
    assert ids[0] == BOS and ids.count(BOS) == 1 and EOS not in ids
    assert ids[1:] == tokenizer(text, add_special_tokens=False).input_ids


@pytest.mark.parametrize("text", ROUND_TRIPS)
def test_decoding_gives_back_the_text(tokenizer, text):
    # Without the hub's clean-up (which strips spaces before punctuation), byte-level BPE is lossless.
    ids = tokenizer(text).input_ids
    assert tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False) == text


def spread_lines(lines: list[str], count: int) -> list[str]:
    """`count` non-blank lines taken evenly over `lines`."""
    lines = [line for line in lines if line.strip()]
    return lines[::max(1, len(lines) // count)][:count]


def offline_texts(per_asset: int = 100) -> list[str]:
    """Lines of each offline text asset that is in the cache, and ShareGPT instructions (code, many languages)."""
    done, texts = assets.status(), []
    for name in ("ptb", "enwiki-excerpt", "brown"):
        if done.get(name):
            texts += spread_lines((asset_path(name) / "test.txt").read_text().splitlines(), per_asset)
    if done.get("sharegpt"):
        pairs = spread_lines((asset_path("sharegpt") / "train.jsonl").read_text().splitlines(), per_asset)
        texts += [json.loads(pair)["instruction"] for pair in pairs]
    return texts


def test_ids_equal_tiktokens_own_encoding_of_metas_file(tokenizer):
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import load_tiktoken_bpe

    bpe_file = asset_path("llama3-tokenizer") / "original" / "tokenizer.model"
    specials = {token: i for token, i in tokenizer.get_vocab().items() if i >= 128_000}
    encoding = tiktoken.Encoding("llama3", pat_str=META_PATTERN, mergeable_ranks=load_tiktoken_bpe(str(bpe_file)),
                                 special_tokens=specials)
    texts = ROUND_TRIPS + ["<|eot_id|>text between<|start_header_id|>", "don't WE'LL they've", "\t \n \r\n  x"]
    texts += offline_texts()
    mismatched = [text[:60] for text in texts if tokenizer(text, add_special_tokens=False).input_ids
                  != encoding.encode(text, allowed_special="all")]
    assert not mismatched, f"{len(mismatched)} of {len(texts)} texts differ, e.g. {mismatched[:3]}"
