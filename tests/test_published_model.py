"""The fleet's shared export (``model.published``) and how ``exported_onnx`` uses it, on a
storage folder: found, checked, refused when damaged or for other weights, and the refusal
of a machine that can neither download nor export. The real fleet, with a torch-free install
and the S3 server, is tests/test_noexport_worker.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from depthfleet.shared.errors import WeightsError
from depthfleet.shared.layout import model_key, model_manifest_key
from depthfleet.shared.model import onnx_export, published
from depthfleet.shared.model.weights import ResolvedWeights
from depthfleet.shared.storage import FileStorage

SHA = "ab" * 32
NAME = f"midas_small-{SHA}-v{onnx_export.EXPORT_VERSION}.onnx"


@pytest.fixture()
def storage(tmp_path: Path) -> FileStorage:
    return FileStorage(tmp_path / "storage")


@pytest.fixture()
def shared_model(tmp_path: Path, storage: FileStorage) -> bytes:
    """A model file some other machine exported and shared (any bytes do: nothing runs it)."""
    exported = tmp_path / "exporter" / NAME
    exported.parent.mkdir()
    exported.write_bytes(b"an exported model " * 1000)
    assert published.upload(storage, exported, SHA) == model_key(NAME)
    return exported.read_bytes()


@pytest.fixture()
def cannot_export(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process as a machine installed without the ``export`` extra."""
    monkeypatch.setattr(onnx_export, "EXPORT_PACKAGES", ("depthfleet_no_such_package",))
    assert not onnx_export.can_export()


def weights(tmp_path: Path) -> ResolvedWeights:
    return ResolvedWeights(tmp_path / "w.pt", SHA, "w.pt", "local")


def test_nothing_shared_is_no_model(tmp_path: Path, storage: FileStorage) -> None:
    assert not published.fetch(storage, tmp_path / "cache" / NAME, SHA)
    assert not published.is_shared(storage, tmp_path / NAME)


def test_shared_model_is_downloaded_and_its_manifest_written_last(
        tmp_path: Path, storage: FileStorage, shared_model: bytes) -> None:
    manifest = json.loads(storage.get(model_manifest_key(NAME)))
    assert manifest["weights_sha256"] == SHA and manifest["size"] == len(shared_model)
    target = tmp_path / "cache" / NAME
    target.parent.mkdir()
    assert published.fetch(storage, target, SHA)
    assert target.read_bytes() == shared_model
    assert target.stat().st_mode & 0o777 == 0o644


def test_damaged_shared_model_is_refused(tmp_path: Path, storage: FileStorage,
                                         shared_model: bytes) -> None:
    storage.put(model_key(NAME), shared_model[:-1] + b"!")
    target = tmp_path / "cache" / NAME
    target.parent.mkdir()
    with pytest.raises(WeightsError, match="export-model"):
        published.fetch(storage, target, SHA)
    assert not target.exists() and not list(target.parent.iterdir())  # no partial file left


def test_shared_model_of_other_weights_is_refused(tmp_path: Path, storage: FileStorage,
                                                  shared_model: bytes) -> None:
    with pytest.raises(WeightsError, match="exported from weights"):
        published.fetch(storage, tmp_path / NAME, "cd" * 32)


def test_machine_without_the_extra_uses_the_shared_export(
        tmp_path: Path, storage: FileStorage, shared_model: bytes, cannot_export: None) -> None:
    path = onnx_export.exported_onnx(weights(tmp_path), tmp_path / "cache", storage)
    assert path == tmp_path / "cache" / "onnx" / NAME
    assert path.read_bytes() == shared_model


def test_machine_without_the_extra_or_a_shared_export_says_how_to_get_one(
        tmp_path: Path, storage: FileStorage, cannot_export: None) -> None:
    for shared in (storage, None):
        with pytest.raises(WeightsError) as refused:
            onnx_export.exported_onnx(weights(tmp_path), tmp_path / "cache", shared)
        assert refused.value.code == "model_not_exported"
        message = refused.value.message
        assert "depthfleet export-model" in message and "depthfleet[export]" in message
        assert (model_key(NAME) in message) == (shared is not None)
