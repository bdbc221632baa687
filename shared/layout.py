"""Where things live in storage: one function per kind of object, so keys are deterministic.

Inputs and results are content-addressed per tenant: the same photo bytes uploaded twice are
stored once, and a result computed once for (photo, weights, options) is reused by every later
item of the same tenant (deduplication), and a retried task overwrites rather than duplicates.
"""

from __future__ import annotations

from collections.abc import Sequence

CACHE_PREFIX = "cache/"


def input_key(tenant: str, sha256: str) -> str:
    """An uploaded photo (or archive entry), by the sha256 of its bytes."""
    return f"t/{tenant}/inputs/{sha256[:2]}/{sha256}"


def staging_key(tenant: str, upload_id: str, filename: str) -> str:
    """A large archive uploaded straight to storage (presigned PUT), before its job expands it."""
    return f"t/{tenant}/staging/{upload_id}/{filename}"


def result_prefix(tenant: str, sha256: str, variant: str) -> str:
    """The folder of one photo's artifacts for one ``variant`` (weights + output options)."""
    return f"t/{tenant}/results/{sha256[:2]}/{sha256}/{variant}"


def artifact_key(prefix: str, filename: str) -> str:
    return f"{prefix}/{filename}"


def result_meta_key(prefix: str) -> str:
    """Written last: its presence means every artifact of the folder is complete."""
    return f"{prefix}/meta.json"


def variant(weights_sha256: str, max_side: int | None, stored: Sequence[str] = ()) -> str:
    """Results depend on the weights, on the output size cap (the depth range in meta.json is
    that of the map at that size) and on which artifacts are stored beside the compact ones
    (``artifacts.stored_names``: drawn ones with their options), so folders with different
    stored sets never mix: ``w<sha>-full-raw``, ``w<sha>-max640-raw+depth_png``,
    ``w<sha>-full-raw+parallax_mp4-circle0.03``. (Before compact results: ``w<sha>-full``,
    still read.)"""
    size = "full" if max_side is None else f"max{max_side}"
    return f"w{weights_sha256[:16]}-{size}-raw" + "".join(f"+{name}" for name in stored)


def render_key(depth_raw_key: str, size: tuple[int, int], filename: str) -> str:
    """A full-size artifact rendered on read, cached for later reads: under ``cache/`` so
    one storage lifecycle rule expires every render (they can all be made again)."""
    folder = depth_raw_key.rsplit("/", 1)[0]
    height, width = size
    return f"{CACHE_PREFIX}{folder}/{width}x{height}/{filename}"


def tenant_prefix(tenant: str) -> str:
    return f"t/{tenant}/"


MODELS_PREFIX = "models/"


def model_key(filename: str) -> str:
    """An exported model shared by the fleet (``model.published``), by its cache file name,
    which carries the weights' sha256 and the exporter's version."""
    return f"{MODELS_PREFIX}{filename}"


def model_manifest_key(filename: str) -> str:
    """Written after the model: its sha256 and the weights it was exported from."""
    return f"{MODELS_PREFIX}{filename}.json"
