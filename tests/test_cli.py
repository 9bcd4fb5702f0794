"""run_all.py's command line: bad input ends with one line that says how to fix it, never a traceback."""

import ast
import subprocess
import sys
from pathlib import Path

import papermill
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import run_all  # noqa: E402


def notebook_of(method: str) -> Path:
    return run_all.NOTEBOOKS / run_all.get_method(method).notebook


@pytest.mark.parametrize("args, message", [
    (["--method", "nope"], "unknown method 'nope'"),
    (["--method", "rtn", "--wbits", "9"], "rtn does not support wbits=9"),
    (["--method", "rtn", "--wbits", "0"], "rtn does not support wbits=0"),
    (["--method", "rtn"], "--wbits is needed for rtn: one of 1, 2, 3, 4, 5, 6, 7, 8"),
    (["--method", "rtn", "--wbits", "4", "--group-size", "x"], "group size must be a positive integer, or 'channel'"),
    (["--method", "rtn", "--wbits", "4", "--group-size", "-128"], "group size must be a positive integer"),
    (["--method", "rtn", "--wbits", "4", "--model", "nosuchmodel"], "unknown model 'nosuchmodel'"),
    (["--method", "rtn", "--wbits", "4", "--model", "meta-llama/Not-A-Model"], "not in the Hugging Face cache"),
    (["--method", "rtn", "--wbits", "4", "--datasets", "wikitext2"], "use --data hub"),
    (["--method", "rtn", "--wbits", "4", "--tasks", "mmlu_pro"], "unknown task 'mmlu_pro'"),
    (["--method", "rtn", "--wbits", "4", "--limit", "0"], "limit must be a positive integer"),
    (["--sweep", "sweeps/none.yaml"], "sweep file sweeps/none.yaml not found"),
])
def test_bad_input_is_one_line_without_traceback(args, message, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert run_all.main([*args, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")


def test_missing_offline_cache_says_how_to_fill_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LLMQ_CACHE", str(tmp_path))
    assert run_all.main(["--dry-run"]) == 2
    assert "python -m llmq_core.assets fetch" in capsys.readouterr().err


def quick_configs() -> list[dict]:
    import yaml

    return yaml.safe_load(run_all.DEFAULT_SWEEP.read_text())["configs"]


@pytest.fixture
def empty_store(tmp_path, monkeypatch):
    """A results store with nothing in it, so that every configuration of a sweep is run."""
    monkeypatch.setenv("LLMQ_RESULTS", str(tmp_path / "empty-store"))


def test_calibration_and_options_reach_only_the_notebooks_that_take_them(cached_model):
    rtn = run_all.notebook_parameters(run_all.RunConfig(method="rtn", wbits=4), notebook_of("rtn"), force=False)
    gptq = run_all.notebook_parameters(run_all.RunConfig(method="gptq", wbits=4, nsamples=16,
                                                         options={"act_order": True}), notebook_of("gptq"), force=False)
    assert "nsamples" not in rtn and "options" not in rtn
    assert gptq["nsamples"] == 16 and gptq["calibration"] == "enwiki-excerpt" and gptq["options"] == {"act_order": True}


@pytest.mark.parametrize("sweep", ["quick.yaml", "full.yaml", "paper-llama3-8b.yaml", "paper-llama3-70b.yaml"])
def test_a_notebook_rebuilds_the_very_configuration_run_all_planned(sweep):
    """papermill leaves the parameters cell's defaults overwritten by what run_all injected; the notebook's
    RunConfig.from_params reads that namespace back into the same configuration: every field the notebook has, and
    the same record key for each target (a field it lacks, such as FP16's calibration, is in none of them)."""
    spec = yaml.safe_load((ROOT / "sweeps" / sweep).read_text())
    for entry in spec["configs"]:
        config = run_all.RunConfig(**{**spec["defaults"], **entry})
        notebook = notebook_of(config.method)
        namespace = {name: ast.literal_eval(parameter["default"])
                     for name, parameter in papermill.inspect_notebook(str(notebook)).items()}
        namespace.update(run_all.notebook_parameters(config, notebook, force=False))
        rebuilt = run_all.RunConfig.from_params(namespace, method=config.method)
        name = run_all.run_slug(config)
        assert all(getattr(rebuilt, field) == getattr(config, field) for field in namespace if field != "force"), name
        assert rebuilt.targets() == config.targets(), name
        assert [rebuilt.record_key(t) for t in rebuilt.targets()] == [config.record_key(t) for t in config.targets()]


def test_a_model_bound_by_a_later_cell_is_a_clear_error():
    with pytest.raises(run_all.LlmqError, match="run the parameters cell again"):
        run_all.RunConfig.from_params({"model": object(), "wbits": 4}, method="rtn")


def test_an_unknown_option_is_a_clear_error(cached_model, capsys):
    config = run_all.RunConfig(method="gptq", wbits=4, options={"actorder": True})
    with pytest.raises(run_all.LlmqError, match="gptq has no option actorder; its options are act_order=False"):
        config.validate()


def test_dry_run_prints_the_quick_plan(cached_model, capsys):
    assert run_all.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"sweep quick: {len(quick_configs())} configurations" in out and "smollm2-135m--rtn-w2a16-g128" in out


def test_list_from_the_shell_prints_each_method_with_its_bits():
    result = subprocess.run([sys.executable, "run_all.py", "--list"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "1, 2, 3, 4, 5, 6, 7, 8" in lines["rtn"] and "16" in lines["fp16"]


def test_a_failing_configuration_is_reported_and_the_others_go_on(cached_model, monkeypatch, capsys, empty_store):
    ran = []

    def fake_execute(notebook, output, parameters, gpu=None):
        ran.append(parameters["wbits"])
        if parameters["wbits"] == 4:
            raise RuntimeError("boom")

    monkeypatch.setattr(run_all, "execute", fake_execute)
    assert run_all.main(["--no-summary"]) == 1
    assert ran == [c.get("wbits", 16) for c in quick_configs()]
    assert "FAILED smollm2-135m--rtn-w4a16-g128: boom" in capsys.readouterr().err


def test_jobs_run_configurations_concurrently_each_once(cached_model, monkeypatch, capsys, empty_store):
    import threading
    import time

    lock, running, peak, ran = threading.Lock(), [0], [0], []

    def fake_execute(notebook, output, parameters, gpu=None):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            ran.append((parameters["wbits"], parameters["group_size"]))
        time.sleep(0.2)
        with lock:
            running[0] -= 1

    monkeypatch.setattr(run_all, "execute", fake_execute)
    assert run_all.main(["--no-summary", "--jobs", "3"]) == 0
    assert peak[0] == 3
    assert sorted(ran, key=str) == sorted([(c.get("wbits", 16), c.get("group_size")) for c in quick_configs()], key=str)


def test_a_configuration_whose_numbers_are_all_stored_is_not_run_again(cached_model, monkeypatch, tmp_path, capsys):
    from llmq_core.config import RunConfig
    from llmq_core.results import ResultStore

    monkeypatch.setenv("LLMQ_RESULTS", str(tmp_path))
    stored = RunConfig(method="rtn", wbits=3, group_size=128, ppl_windows=8, seqlen=512, limit=50)
    for target in stored.targets():
        ResultStore(tmp_path).put(stored.record_key(target), {"ppl": 1.0}, wall_time_s=0, device="cpu")
    ran = []
    monkeypatch.setattr(run_all, "execute", lambda notebook, output, parameters, gpu=None: ran.append(output.stem))
    single = ["--method", "rtn", "--wbits", "3", "--group-size", "128", "--no-summary"]
    assert run_all.main(single) == 0 and ran == []
    assert "1 already stored" in capsys.readouterr().out
    assert run_all.main([*single, "--wbits", "2"]) == 0 and ran == ["smollm2-135m--rtn-w2a16-g128"]
    assert run_all.main([*single, "--force"]) == 0 and ran[-1] == "smollm2-135m--rtn-w3a16-g128"


def test_cuda_without_a_sweep_plans_the_full_sweep(cached_model):
    args = run_all.parse_args(["--device", "cuda"])
    sweep, configs = run_all.plan(args)
    assert sweep == "full" and all(c.seqlen == 2048 and c.limit is None for c in configs)


def test_shards_partition_the_sweep():
    args = run_all.parse_args(["--device", "cuda"])
    _, configs = run_all.plan(args)
    everything = [run_all.run_slug(c) for c in configs]
    for count in (1, 2, 3, 7, len(configs) + 1):
        parts = [[run_all.run_slug(c) for c in run_all.shard(configs, index, count)] for index in range(count)]
        assert sorted(slug for part in parts for slug in part) == sorted(everything)  # each exactly once
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("value", ["4/4", "1", "-1/2", "a/b", "1/0"])
def test_a_bad_shard_says_what_it_takes(value, capsys):
    with pytest.raises(SystemExit):
        run_all.parse_args([f"--shard={value}"])
    assert "--shard takes i/N with 0 <= i < N" in capsys.readouterr().err


def test_more_gpus_than_visible_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert run_all.main(["--gpus", "2", "--dry-run"]) == 2
    assert "--gpus 2 asked for, but 1 GPU(s) can be used here" in capsys.readouterr().err


def test_gpus_run_each_configuration_once_on_a_shared_store(cached_model, monkeypatch, tmp_path, empty_store):
    """Two fake GPUs with two notebooks each: every configuration runs once, both GPUs get work, and the one
    store that all of them write holds one record per configuration."""
    import threading
    import time

    from llmq_core.results import ResultStore

    store, lock, ran = ResultStore(tmp_path), threading.Lock(), []

    def fake_execute(notebook, output, parameters, gpu=None):
        time.sleep(0.05)
        store.put({"model": "fake", "method": "fake", "target": output.stem}, {"gpu": gpu}, wall_time_s=0, device="cpu")
        with lock:
            ran.append((output.stem, gpu))

    monkeypatch.setattr(run_all, "execute", fake_execute)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")  # ids as a scheduler hands them out, not 0 and 1
    assert run_all.main(["--no-summary", "--gpus", "2", "--jobs", "2"]) == 0
    slugs = [slug for slug, _ in ran]
    assert sorted(slugs) == sorted(set(slugs)) and len(slugs) == len(quick_configs())
    assert {gpu for _, gpu in ran} == {"5", "7"}
    assert sorted(r["key"]["target"] for r in store.records()) == sorted(slugs)


def test_execute_runs_the_notebook_in_its_folder_on_its_gpu(tmp_path):
    """The real papermill process: the parameters arrive, the kernel starts in the notebook's folder and sees
    only its GPU; a failing cell raises with the error's last line."""
    import nbformat

    folder = tmp_path / "notebooks"
    folder.mkdir()
    notebook = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell("target = None\nfail = False")
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [parameters, nbformat.v4.new_code_cell(
        "import os\nopen(target, 'w').write(os.getcwd() + ' ' + os.environ.get('CUDA_VISIBLE_DEVICES', 'all'))\n"
        "if fail:\n    raise ValueError('this cell failed')")]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, folder / "probe.ipynb")
    seen = tmp_path / "seen.txt"
    run_all.execute(folder / "probe.ipynb", tmp_path / "out" / "probe.ipynb", {"target": str(seen)}, gpu="3")
    assert seen.read_text() == f"{folder} 3"
    with pytest.raises(RuntimeError, match="this cell failed"):
        run_all.execute(folder / "probe.ipynb", tmp_path / "out" / "probe.ipynb", {"target": str(seen), "fail": True})


def test_a_kernel_that_dies_on_start_is_started_again_and_other_failures_are_not(tmp_path, monkeypatch, capsys):
    import subprocess

    calls = []

    def papermill(stderr_of_each_call):
        def fake_run(command, **kwargs):
            calls.append(command)
            stderr = stderr_of_each_call[min(len(calls), len(stderr_of_each_call)) - 1]
            return subprocess.CompletedProcess(command, 1 if stderr else 0, "", stderr)
        return fake_run

    died = "RuntimeError: Kernel died before replying to kernel_info"
    monkeypatch.setattr(run_all.subprocess, "run", papermill([died, died, ""]))
    run_all.execute(tmp_path / "a.ipynb", tmp_path / "out" / "a.ipynb", {})
    assert len(calls) == 3 and capsys.readouterr().err.count("starting it again") == 2
    calls.clear()
    monkeypatch.setattr(run_all.subprocess, "run", papermill([died]))
    with pytest.raises(RuntimeError, match="Kernel died"):
        run_all.execute(tmp_path / "a.ipynb", tmp_path / "out" / "a.ipynb", {})
    assert len(calls) == run_all.KERNEL_START_ATTEMPTS == capsys.readouterr().err.count("starting it again") + 1
    calls.clear()
    monkeypatch.setattr(run_all.subprocess, "run", papermill(["ValueError: this cell failed"]))
    with pytest.raises(RuntimeError, match="this cell failed"):
        run_all.execute(tmp_path / "a.ipynb", tmp_path / "out" / "a.ipynb", {})
    assert len(calls) == 1
