"""The error codes of the contract, carried by one exception type.

An ``InputError`` is the user's fault and is final (never retried); the HTTP layer turns it
into ``{"error": {"code", "message"}}`` with ``status``, and a worker marks the item failed
with the same code and message.
"""

from __future__ import annotations

# code -> HTTP status, for single uploads; inside a batch the same codes mark an item failed.
IMAGE_ERROR_STATUS: dict[str, int] = {
    "empty_file": 400,
    "not_an_image": 415,
    "unsupported_format": 415,
    "corrupt_image": 422,
    "invalid_dimensions": 422,
    "too_many_pixels": 413,
    "file_too_large": 413,
}


class DepthFleetError(Exception):
    """Base class: a machine-readable ``code``, a human ``message`` and an HTTP ``status``."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class InputError(DepthFleetError):
    """Bad input (an image, an archive entry, a request field): final, never retried."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(code, message, status or IMAGE_ERROR_STATUS.get(code, 400))


class WeightsError(DepthFleetError):
    """The model checkpoint cannot be fetched, verified or loaded: workers refuse to start."""

    def __init__(self, message: str, code: str = "weights_invalid") -> None:
        super().__init__(code, message, 503)
