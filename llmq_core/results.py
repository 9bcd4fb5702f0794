"""The results store: one JSON file per measured number, written atomically, never silently replaced.

A record's key is (model, method, wbits, abits, group_size, options, data source, target,
limit, seqlen, seed), where the target is a perplexity text or a zero-shot task. Asking for
the same key again reuses the record, so a killed sweep resumes where it stopped.
A record also keeps how it was obtained: wall time, peak memory, device (on a CPU its model and kernel set),
package versions with a digest of every installed distribution's, and the git commit.

    results/<model>/<method>/<target>--<short hash of the key>.json

Records measured elsewhere (a GPU node, a cluster's shards with stores of their own) join this store with

    python -m llmq_core.results add OTHER_STORE_OR_ARCHIVE.tgz [--replace]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from llmq_core.errors import LlmqError

REPO_ROOT = Path(__file__).resolve().parent.parent
# numpy and gguf make the embedded model's weights from its GGUF, tokenizers its token ids: a record's perplexity can
# move in its 5th digit with any of them, so each is kept beside the frameworks
VERSIONED_PACKAGES = ("torch", "transformers", "lm_eval", "datasets", "peft", "bitsandbytes", "numpy", "gguf",
                      "tokenizers", "safetensors")


def results_dir() -> Path:
    return Path(os.environ.get("LLMQ_RESULTS", REPO_ROOT / "results"))


def output_dir() -> Path:
    """Where figures/ and paper/tables/ are written: the repo, or $LLMQ_OUTPUT (tests write elsewhere)."""
    return Path(os.environ.get("LLMQ_OUTPUT", REPO_ROOT))


def adapters_dir() -> Path:
    """Where fine-tuned adapters are kept, so that a resumed run evaluates them instead of training again."""
    return Path(os.environ.get("LLMQ_ADAPTERS", REPO_ROOT / "runs" / "adapters"))


def answers_dir() -> Path:
    """Where a task's answers so far are checkpointed, so that a run cut short resumes the task (eval/lm.py)."""
    return Path(os.environ.get("LLMQ_ANSWERS", REPO_ROOT / "runs" / "answers"))


def key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    # the model and ATen's vector kernels (AVX2, AVX512...): two CPUs can round the same sums differently
    return f"cpu ({cpu_model()}, {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads)"


def git_commit() -> str:
    """HEAD (+dirty), or $LLMQ_GIT_COMMIT where the code runs from a copy without .git (a node that got a copy of the tree)."""
    if os.environ.get("LLMQ_GIT_COMMIT"):
        return os.environ["LLMQ_GIT_COMMIT"]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            pass
    versions["installed_sha256"] = installed_digest()
    return versions


@functools.cache  # the scan takes ~0.3 s and the install does not change while a sweep runs
def installed_digest() -> str:
    """Every installed distribution as one digest: two records with equal digests came from the same install."""
    installed = sorted({f"{dist.metadata['Name']}=={dist.version}" for dist in metadata.distributions()})
    return hashlib.sha256("\n".join(installed).encode()).hexdigest()[:16]


class ResultStore:
    """Records under `root` (default: the repo's results/, or $LLMQ_RESULTS)."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else results_dir()

    def path(self, key: dict[str, Any]) -> Path:
        return self.root / key["model"] / key["method"] / f"{key['target']}--{key_hash(key)}.json"

    def get(self, key: dict[str, Any]) -> dict[str, Any] | None:
        path = self.path(key)
        return json.loads(path.read_text()) if path.exists() else None

    def put(self, key: dict[str, Any], metrics: dict[str, Any], *, wall_time_s: float, device: str,
            extra: dict[str, Any] | None = None, replace: bool = False) -> dict[str, Any]:
        """Record `metrics` for `key`, with how they were obtained. An existing record is only
        replaced when `replace` is set (the sweep's --force)."""
        return self.write({
            "key": key,
            "metrics": metrics,
            "wall_time_s": round(wall_time_s, 3),
            "peak_memory_mb": round(peak_memory_mb(device), 1),
            "device": device_name(device),
            "versions": package_versions(),
            "git_commit": git_commit(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **(extra or {}),
        }, replace)

    def write(self, record: dict[str, Any], replace: bool = False) -> dict[str, Any]:
        """Store a complete record as it is (also one measured elsewhere, e.g. on a GPU node)."""
        path = self.path(record["key"])
        exists = LlmqError(f"a result for this configuration exists already ({path}); "
                           "pass --force (force=True) to recompute and replace it")
        if path.exists() and not replace:
            raise exists
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write beside the target, then rename: a killed run leaves the old record or the new one, never half.
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
            json.dump(record, tmp, indent=1, sort_keys=True)
        if replace:
            os.replace(tmp.name, path)
            return record
        # A hard link fails where the name exists: of two workers (or machines on a shared store) writing the
        # same record at once, one gets the error instead of both succeeding.
        try:
            os.link(tmp.name, path)
        except FileExistsError:
            raise exists from None
        finally:
            os.unlink(tmp.name)
        return record

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted(self.root.glob("*/*/*.json"))]


def add_records(source: ResultStore, store: ResultStore, replace: bool = False) -> tuple[int, int, list[str]]:
    """Copy `source`'s records into `store`: a new one is added, one stored with the same content is skipped, one
    that differs is left as it is unless `replace`. Returns (added, already stored, the differing records' names)."""
    added, same, conflicts = 0, 0, []
    for path in sorted(source.root.glob("*/*/*.json")):
        record = json.loads(path.read_text())
        stored = store.get(record["key"])
        if stored == record:
            same += 1
        elif stored is None or replace:
            store.write(record, replace=replace)
            added += 1
        else:
            conflicts.append(path.name)
    return added, same, conflicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmq_core.results", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="add the records of another store (a folder, or a .tgz holding results/)")
    add.add_argument("source", type=Path)
    add.add_argument("--replace", action="store_true", help="replace stored records that differ")
    args = parser.parse_args(argv)
    store = ResultStore()
    with tempfile.TemporaryDirectory() as unpacked:
        source = args.source
        if source.is_file():
            with tarfile.open(source) as archive:
                archive.extractall(unpacked, filter="data")
            source = Path(unpacked) / "results"
        if not source.is_dir():
            print(f"error: {args.source} is neither a results folder nor an archive holding results/", file=sys.stderr)
            return 2
        added, same, conflicts = add_records(ResultStore(source), store, args.replace)
    print(f"{added} records added to {store.root}, {same} already stored" + (
        f", {len(conflicts)} differ and were kept as they are (--replace to take the new ones): {', '.join(conflicts)}"
        if conflicts else ""))
    return 1 if conflicts else 0


def peak_memory_mb(device: str) -> float:
    """Peak GPU memory allocated by torch, or the process's peak resident memory on CPU."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(torch.device(device)) / 2 ** 20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class Timer:
    """`with Timer() as t: ...; t.seconds`"""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


if __name__ == "__main__":
    sys.exit(main())
