import json
from pathlib import Path

import pytest

from llmq_core import assets
from llmq_core.assets import Asset, AssetError, PackageFile


def fake_package(tmp_path: Path, content: bytes = b"payload") -> PackageFile:
    import hashlib

    return PackageFile("pypi", "fake", "1.0", "fake-1.0.whl", hashlib.sha256(content).hexdigest())


@pytest.fixture
def fake_registry(tmp_path, monkeypatch):
    """One package and one asset whose preparer copies the package's bytes."""
    package = fake_package(tmp_path)
    calls = []

    def download(self, dest):
        calls.append(self.name)
        (dest / self.filename).write_bytes(b"payload")
        assets.verify_sha256(dest / self.filename, self.sha256)
        return dest / self.filename

    def prepare(packages, out):
        (out / "data.txt").write_bytes(packages["fake"].read_bytes())

    monkeypatch.setattr(PackageFile, "download", download)
    monkeypatch.setitem(assets.PACKAGES, "fake", package)
    monkeypatch.setattr(assets, "all_assets", lambda: {"thing": Asset("thing", "things/thing", ("fake",), prepare)})
    return calls


def test_fetch_fills_the_cache_and_is_then_a_no_op(tmp_path, fake_registry):
    assets.fetch(root=tmp_path, log=lambda _: None)
    assert (tmp_path / "things/thing/data.txt").read_bytes() == b"payload"
    assert fake_registry == ["fake"]
    assets.fetch(root=tmp_path, log=lambda _: None)
    assert fake_registry == ["fake"]  # nothing downloaded again
    assert assets.status(tmp_path) == {"thing": True}


def test_a_failing_preparer_leaves_nothing_half_written(tmp_path, fake_registry, monkeypatch):
    def broken(packages, out):
        (out / "half.txt").write_text("half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(assets, "all_assets", lambda: {"thing": Asset("thing", "things/thing", ("fake",), broken)})
    with pytest.raises(RuntimeError, match="disk full"):
        assets.fetch(root=tmp_path, log=lambda _: None)
    assert not (tmp_path / "things").exists() or not any((tmp_path / "things").iterdir())
    assert assets.status(tmp_path) == {"thing": False}


def test_a_stale_marker_makes_the_asset_incomplete(tmp_path, fake_registry):
    assets.fetch(root=tmp_path, log=lambda _: None)
    marker = tmp_path / "things/thing/.llmq-complete.json"
    marker.write_text(json.dumps({"format": -1, "packages": {}}))
    assert assets.status(tmp_path) == {"thing": False}


def test_sha256_mismatch_names_the_file(tmp_path):
    path = tmp_path / "pkg.whl"
    path.write_bytes(b"tampered")
    with pytest.raises(AssetError, match="pkg.whl: sha256 is"):
        assets.verify_sha256(path, "0" * 64)


def test_unknown_asset_is_a_clear_error():
    with pytest.raises(AssetError, match="unknown asset"):
        assets.fetch(["nope"])
