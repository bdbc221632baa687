"""Where things live in storage: one function per kind of object, so keys are deterministic.

Inputs and results are content-addressed per tenant: the same photo bytes uploaded twice are
stored once, and a result computed once for (photo, weights, options) is reused by every later
item of the same tenant (deduplication), and a retried task overwrites rather than duplicates.
"""

from __future__ import annotations


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


def variant(weights_sha256: str, max_side: int | None) -> str:
    """Results depend on the weights and on the output size cap, nothing else."""
    return f"w{weights_sha256[:16]}-{'full' if max_side is None else f'max{max_side}'}"


def tenant_prefix(tenant: str) -> str:
    return f"t/{tenant}/"
