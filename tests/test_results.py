import json
from pathlib import Path

import pytest

from llmq_core.errors import LlmqError
from llmq_core.config import RunConfig
from llmq_core.results import ResultStore


def key(**changes):
    return {**RunConfig(method="rtn", wbits=4, group_size=128, limit=50).record_key("piqa"), **changes}


def test_put_get_roundtrip_with_provenance(tmp_path):
    store = ResultStore(tmp_path)
    store.put(key(), {"acc": 0.5}, wall_time_s=1.23, device="cpu")
    record = store.get(key())
    assert record["metrics"] == {"acc": 0.5}
    assert record["key"] == key()
    for field in ("wall_time_s", "peak_memory_mb", "device", "versions", "git_commit", "created"):
        assert field in record
    assert "torch" in record["versions"]


def test_a_cpu_record_names_the_kernels_and_the_whole_install(tmp_path, monkeypatch):
    import torch
    from importlib import metadata
    from llmq_core import results
    store = ResultStore(tmp_path)
    store.put(key(), {"acc": 0.5}, wall_time_s=1, device="cpu")
    record = store.get(key())
    assert f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads" in record["device"]
    # one more installed distribution changes the digest
    extra = type("Dist", (), {"metadata": {"Name": "some-plugin"}, "version": "1.0"})()
    installed = list(metadata.distributions())
    monkeypatch.setattr(metadata, "distributions", lambda: [*installed, extra])
    assert results.installed_digest.__wrapped__() != record["versions"]["installed_sha256"]


def test_never_silently_overwritten(tmp_path):
    store = ResultStore(tmp_path)
    store.put(key(), {"acc": 0.5}, wall_time_s=1, device="cpu")
    with pytest.raises(LlmqError, match="--force"):
        store.put(key(), {"acc": 0.9}, wall_time_s=1, device="cpu")
    assert store.get(key())["metrics"]["acc"] == 0.5
    store.put(key(), {"acc": 0.9}, wall_time_s=1, device="cpu", replace=True)
    assert store.get(key())["metrics"]["acc"] == 0.9


def test_two_writers_of_one_record_cannot_both_succeed(tmp_path, monkeypatch):
    """Workers on one store (run_all --gpus, shards on a shared folder) may both find a record missing and then
    both write it: the second write must fail, not replace the first."""
    store = ResultStore(tmp_path)
    store.put(key(), {"acc": 0.5}, wall_time_s=1, device="cpu")
    monkeypatch.setattr(Path, "exists", lambda self: False)  # as if the second writer checked before the first wrote
    with pytest.raises(LlmqError, match="exists already"):
        store.put(key(), {"acc": 0.9}, wall_time_s=1, device="cpu")
    monkeypatch.undo()
    assert store.get(key())["metrics"]["acc"] == 0.5
    assert [p.name for p in store.path(key()).parent.iterdir()] == [store.path(key()).name]  # no temporary left


def test_every_key_field_separates_records(tmp_path):
    store = ResultStore(tmp_path)
    variants = [key(), key(limit=None), key(wbits=3), key(group_size=None), key(seed=1), key(target="hellaswag"),
                key(dtype="bfloat16"), key(options={"nsamples": 8})]
    for i, variant in enumerate(variants):
        store.put(variant, {"acc": i}, wall_time_s=1, device="cpu")
    assert len(store.records()) == len(variants)
    assert [store.get(v)["metrics"]["acc"] for v in variants] == list(range(len(variants)))


def test_a_write_killed_half_way_leaves_no_record(tmp_path):
    store = ResultStore(tmp_path)
    path = store.path(key())
    path.parent.mkdir(parents=True)
    (path.parent / "leftover.tmp").write_text('{"key": ')  # what a killed atomic write leaves behind
    assert store.get(key()) is None and store.records() == []
    store.put(key(), {"acc": 0.1}, wall_time_s=1, device="cpu")
    assert json.loads(path.read_text())["metrics"]["acc"] == 0.1


def test_pending_lists_only_what_is_missing(tmp_path):
    store = ResultStore(tmp_path)
    config = RunConfig(method="rtn", wbits=4, group_size=128, limit=50, ppl_windows=8, seqlen=512)
    store.put(config.record_key("ptb"), {"ppl": 10.0}, wall_time_s=1, device="cpu")
    store.put(config.record_key("piqa"), {"acc": 0.5}, wall_time_s=1, device="cpu")
    assert config.pending(store) == ["enwiki-excerpt", "brown", "arc_easy", "arc_challenge", "hellaswag", "winogrande"]
    # the zero-shot record does not depend on seqlen; the perplexity record does
    other = RunConfig(method="rtn", wbits=4, group_size=128, limit=50, ppl_windows=8, seqlen=1024)
    assert "piqa" not in other.pending(store) and "ptb" in other.pending(store)


def test_bits_given_as_float_or_int_share_one_record():
    from_cli, from_yaml = RunConfig(method="rtn", wbits=4.0), RunConfig(method="rtn", wbits=4)
    assert from_cli.record_key("ptb") == from_yaml.record_key("ptb")
    assert RunConfig(method="rtn", wbits=1.7).wbits == 1.7


def test_adding_another_stores_records_adds_new_ones_and_never_overwrites_a_different_one(tmp_path, monkeypatch):
    import tarfile

    from llmq_core import results

    remote, local = ResultStore(tmp_path / "remote" / "results"), ResultStore(tmp_path / "local")
    monkeypatch.setenv("LLMQ_RESULTS", str(tmp_path / "local"))
    config = RunConfig(method="rtn", wbits=4)
    local.put(config.record_key("ptb"), {"ppl": 10.0}, wall_time_s=1.0, device="cpu")
    remote.put(config.record_key("ptb"), {"ppl": 11.0}, wall_time_s=1.0, device="cpu")  # differs
    remote.put(config.record_key("brown"), {"ppl": 20.0}, wall_time_s=1.0, device="cpu")  # new
    archive = tmp_path / "results.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "remote" / "results", "results")
    assert results.main(["add", str(archive)]) == 1
    assert local.get(config.record_key("ptb"))["metrics"]["ppl"] == 10.0
    assert local.get(config.record_key("brown"))["metrics"]["ppl"] == 20.0
    assert results.main(["add", str(archive), "--replace"]) == 0
    assert local.get(config.record_key("ptb"))["metrics"]["ppl"] == 11.0
    assert results.main(["add", str(tmp_path / "remote" / "results")]) == 0  # a folder: all of it stored already
