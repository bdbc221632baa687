"""Every error leaves the API as ``{"error": {"code", "message"}}`` with a fitting status."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from depthfleet.shared.errors import DepthFleetError

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 30


def error_response(code: str, message: str, status: int) -> Response:
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    if status in (429, 503):
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def _snake(name: str) -> str:
    return "_".join(name.lower().split())


def init_app(app: Flask) -> None:
    @app.errorhandler(DepthFleetError)
    def _ours(exc: DepthFleetError) -> Response:
        return error_response(exc.code, exc.message, exc.status)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = "file_too_large" if status == 413 else _snake(exc.name)
        message = exc.description or exc.name
        if status == 413:
            message = "the request body is larger than DEPTHFLEET_MAX_UPLOAD_MB allows"
        response = error_response(code, message, status)
        for name, value in exc.get_headers():  # Allow, WWW-Authenticate, Retry-After...
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        import redis

        if isinstance(exc, (RecursionError, UnicodeError)):  # input no check caught: a 400
            log.warning("refused a request: %s", type(exc).__name__, exc_info=exc)
        if isinstance(exc, RecursionError):  # e.g. a JSON body nested thousands deep
            return error_response("invalid_json", "the request nests too deeply", 400)
        if isinstance(exc, UnicodeError):  # a header, field or name that is not UTF-8
            return error_response("invalid_encoding", "the request holds text that is not "
                                  "valid UTF-8", 400)
        if isinstance(exc, redis.RedisError):
            log.warning("job store unavailable: %s", exc)
            return error_response("unavailable", "the job store is unreachable; try again", 503)
        log.exception("unhandled error")
        return error_response("internal_error", "internal error", 500)
