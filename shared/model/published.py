"""The exported model in the fleet's storage: one machine exports, every other downloads.

Exporting needs torch, torchvision and timm (the ``export`` extra, gigabytes); running the
exported model needs none of them. So the machine that exports (a worker installed with the
extra, or ``depthfleet export-model``) uploads the file to ``models/<cache file name>`` of
``DEPTHFLEET_STORAGE_URL``, then a manifest with its sha256 and the weights' sha256 beside it;
a machine that lacks the file downloads it, checks that sha256 and publishes it into its own
cache. The name carries the weights' sha256 and ``EXPORT_VERSION``, so another checkpoint or
exporter never picks up a stale export, and the manifest is written last, so a half-finished
upload is never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from depthfleet.shared.digests import sha256_file
from depthfleet.shared.errors import WeightsError
from depthfleet.shared.layout import model_key, model_manifest_key
from depthfleet.shared.model.cachefiles import publish, temporary_path
from depthfleet.shared.storage import ObjectMissing, Storage

log = logging.getLogger(__name__)


def fetch(storage: Storage, target: Path, weights_sha256: str) -> bool:
    """Download the fleet's copy of ``target`` into place, checked; False if it has none."""
    try:
        manifest = json.loads(storage.get(model_manifest_key(target.name)))
    except ObjectMissing:
        return False
    where = f"{storage.url}/{model_key(target.name)}"
    if manifest.get("weights_sha256") != weights_sha256:
        raise WeightsError(f"the shared model {where} says it was exported from weights "
                           f"{manifest.get('weights_sha256')}, not {weights_sha256}")
    with temporary_path(target.parent, suffix=".onnx") as partial:
        got = _download(storage, model_key(target.name), partial)
        if got != manifest.get("sha256"):
            raise WeightsError(f"the shared model {where} has sha256 {got}, but its manifest "
                               f"records {manifest.get('sha256')}: delete both objects and run "
                               "`depthfleet export-model` again")
        publish(partial, target)
    log.info("exported model %s downloaded from %s", target.name, where)
    return True


def upload(storage: Storage, exported: Path, weights_sha256: str) -> str:
    """Share ``exported`` with the fleet (the manifest last); returns the model's key."""
    key = model_key(exported.name)
    manifest = {"sha256": sha256_file(exported), "weights_sha256": weights_sha256,
                "size": exported.stat().st_size}
    storage.put_file(key, exported)
    storage.put(model_manifest_key(exported.name), (json.dumps(manifest, indent=1) + "\n").encode(),
                "application/json")
    log.info("exported model shared as %s/%s", storage.url, key)
    return key


def is_shared(storage: Storage, exported: Path) -> bool:
    return storage.exists(model_manifest_key(exported.name))


def _download(storage: Storage, key: str, dest: Path) -> str:
    """Stream ``key`` into ``dest``; returns the sha256 of what arrived."""
    digest = hashlib.sha256()
    with dest.open("wb") as fh:
        for chunk in storage.stream(key).chunks:
            fh.write(chunk)
            digest.update(chunk)
    return digest.hexdigest()
