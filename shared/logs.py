"""Structured logs: one JSON object per line, for the API, the worker and the CLI's servers.

Log pipelines (Loki, CloudWatch, Elasticsearch...) index fields, so every line about a job
carries ``job_id``, ``item`` and ``tenant`` from ``log_context`` instead of each message
repeating them. Lines never carry secrets or image data: bearer tokens, presigned URL
signatures, passwords in URLs and the configured API keys are replaced by ``[redacted]``,
bytes arguments by their length, and overlong messages are cut.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any

from depthfleet.shared.settings import Settings

REDACTED = "[redacted]"
MAX_MESSAGE = 4000  # characters; longer messages are cut (a blob never fills a log)
SECRET_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[^\s'\",;]+"),
    re.compile(r"(?i)(X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s'\"]+"),
    re.compile(r"(?i)(Signature=)[^&\s'\"]+"),
    re.compile(r"(://[^:/@\s]*:)[^@\s/]+(?=@)"),  # scheme://user:password@host
)
# What every LogRecord has; anything else on a record came from ``extra=`` and is logged.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_CONTEXT: ContextVar[Mapping[str, Any]] = ContextVar("depthfleet_log_context", default={})


def bind_context(**fields: Any) -> Token[Mapping[str, Any]]:
    """Add ``fields`` (``job_id``, ``item``, ``tenant``...) to every line from now on, until
    ``unbind_context`` gets the token back (for scopes that signals open and close)."""
    return _CONTEXT.set({**_CONTEXT.get(), **{k: v for k, v in fields.items() if v is not None}})


def unbind_context(token: Token[Mapping[str, Any]]) -> None:
    """Back to the fields before the ``bind_context`` call that gave ``token``."""
    _CONTEXT.reset(token)


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """``fields`` on every line logged inside the block."""
    token = bind_context(**fields)
    try:
        yield
    finally:
        unbind_context(token)


def current_context() -> Mapping[str, Any]:
    return _CONTEXT.get()


class Scrubber:
    """Removes secrets from text: known patterns plus the exact secrets it is given."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        for pattern in SECRET_PATTERNS:
            text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
        return text


def _safe_arg(value: Any) -> Any:
    """Bytes never reach a log line, only their length."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    return value


def _message(record: logging.LogRecord) -> str:
    msg, args = _safe_arg(record.msg), record.args
    if isinstance(args, Mapping):
        args = {k: _safe_arg(v) for k, v in args.items()}
    elif args:
        args = tuple(_safe_arg(a) for a in args)
    text = str(msg) % args if args else str(msg)
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "...[cut]"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, component, pid, message, context."""

    def __init__(self, component: str, scrub: Scrubber | None = None) -> None:
        super().__init__()
        self.component = component
        self.scrub = scrub or Scrubber()

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                  + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "component": self.component,
            "pid": record.process, "msg": self.scrub(_message(record)),
        }
        entry.update(current_context())
        entry.update({k: _safe_arg(v) for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.scrub(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


class _OurHandler(logging.StreamHandler):
    """Marks the handler ``configure_logging`` installed, so calling it again replaces it."""


def configure_logging(settings: Settings, component: str) -> None:
    """JSON lines on stderr for every logger (root), at ``DEPTHFLEET_LOG_LEVEL``; idempotent."""
    secrets = [*settings.api_keys, *([settings.client_api_key] if settings.client_api_key else [])]
    handler = _OurHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(component, Scrubber(secrets)))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _OurHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    logging.captureWarnings(True)
