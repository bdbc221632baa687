"""Fuzzing every route of the real API: no input gives a 5xx, no error path is an oracle.

The API is the gunicorn process ``depthfleet api`` starts, on the machine's Redis and an S3
server process (S3, not a folder: presigned uploads answer ``501`` on folder storage by
design; no Celery worker: tasks just wait in Redis). Routes are enumerated from the
Flask URL map; each is classified below by what its body is, so a new route fails this test
until it is fuzzed too. Every method of every route gets a bounded, seeded-random set of
requests: path parameters, query strings, headers and bodies of every shape. Asserted:

- no response is a 5xx (``/readyz`` included: its dependencies are up);
- every 4xx under ``/v1`` is ``{"error": {"code": str, "message": str}}`` (except gunicorn's
  own HTML refusals of request lines or headers over its limits: the app never sees those);
- no input reaches the last-resort handlers (RecursionError, UnicodeError);
- for every route naming a job, another tenant's job (with every suffix and variant) answers
  exactly like a job that never existed;
- a body longer than ``DEPTHFLEET_MAX_UPLOAD_MB``, chunked or not, is ``413 file_too_large``.

``DEPTHFLEET_FUZZ_SEED`` replays another seed; the seed in use is printed.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import random
import re
import socket
import time
import uuid
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pytest
import requests
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Rule

from depthfleet.api import create_app
from depthfleet.shared.artifacts import ARTIFACTS
from depthfleet.shared.settings import Settings
from support import s3_system, tiny_jpeg

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("DEPTHFLEET_FUZZ_SEED", "20260611"))
KEYS = {"alice": "key-alice-fuzz-5e1b9d", "bob": "key-bob-fuzz-0c7a3f"}
ALICE = {"Authorization": f"Bearer {KEYS['alice']}"}
BOB = {"Authorization": f"Bearer {KEYS['bob']}"}
MAX_UPLOAD_MB = 25
MB = 1 << 20
PER_METHOD = {"GET": 130, "POST": 240, "PUT": 150, "DELETE": 70, "HEAD": 30, "OPTIONS": 12}
TIMEOUT = 60
PARALLEL = 8

# What each endpoint takes as a body; a route missing here fails the test until classified.
BODY_KIND = {
    "static": "none", "web.static": "none", "web.index": "none",
    "health.healthz": "none", "health.readyz": "none", "health.metrics": "none",
    "jobs.create_job": "job", "jobs.get_job": "none", "jobs.list_items": "none",
    "jobs.manifest": "none", "jobs.artifact": "none", "jobs.cancel_job": "none",
    "jobs.retry_job": "none", "jobs.list_jobs": "none", "jobs.results_zip": "none",
    "uploads.check": "check", "uploads.presign": "presign",
    "uploads.put": "raw",
}
ARTIFACT_FILES = tuple(spec.filename for spec in ARTIFACTS.values())
ARGUMENT = re.compile(r"<(?:\w+(?:\([^)]*\))?:)?(\w+)>")


# -- the deployment ------------------------------------------------------------------------
@dataclass
class World:
    """The running API and what exists in it: one job per tenant and one upload of alice's."""

    api: str
    rules: list[Rule]
    alice_job: str
    bob_job: str
    digest: str
    photo: bytes
    log: Callable[[], str]
    adapter: Any
    own: str  # alice's own folder in storage, as an s3:// URL


@pytest.fixture(scope="module")
def world(tmp_path_factory, redis_db_url, s3_server) -> Iterator[World]:
    root = tmp_path_factory.mktemp("fuzz")
    system = s3_system(root, redis_db_url, s3_server, root / "no-weights.pt",
                       f"fuzz-{uuid.uuid4().hex[:12]}",
                       DEPTHFLEET_API_KEYS=",".join(f"{t}:{k}" for t, k in KEYS.items()),
                       DEPTHFLEET_MAX_UPLOAD_MB=str(MAX_UPLOAD_MB))
    try:
        system.start_api(processes=2)
        api = system.api_url
        photo = tiny_jpeg(7)
        digest = hashlib.sha256(photo).hexdigest()
        jobs = {}
        for tenant, headers in (("alice", ALICE), ("bob", BOB)):
            put = requests.put(f"{api}/v1/uploads/{digest}", data=photo, headers=headers,
                               timeout=TIMEOUT)
            assert put.status_code == 201, put.text
            job = requests.post(f"{api}/v1/jobs", headers=headers, timeout=TIMEOUT,
                                json={"uploads": [{"name": f"{tenant}.jpg", "sha256": digest}]})
            assert job.status_code == 202, job.text
            jobs[tenant] = job.json()["id"]
        app = create_app(Settings.from_env(system.env))
        yield World(api, list(app.url_map.iter_rules()), jobs["alice"], jobs["bob"], digest,
                    photo, lambda: system.log("api.log"), app.url_map.bind("localhost"),
                    f"{system.env['DEPTHFLEET_STORAGE_URL']}/t/alice/")
    finally:
        system.stop()


# -- requests as data ----------------------------------------------------------------------
@dataclass
class Probe:
    """One request: sent with ``requests``, or byte for byte over a socket when ``raw``."""

    endpoint: str
    method: str
    path: str  # percent-encoded as sent
    query: str = ""
    headers: dict[str, Any] = field(default_factory=dict)
    body: bytes | Callable[[], Iterator[bytes]] | None = None
    what: str = ""
    raw: bool = False

    def describe(self) -> str:
        body = self.body if isinstance(self.body, bytes | None) else "<chunked>"
        shown = body[:160] if isinstance(body, bytes) else body
        headers = {k: (v[:80] if isinstance(v, str | bytes) else v) for k, v in
                   self.headers.items() if k != "Authorization"}
        return (f"{self.method} {self.path[:200]}{'?' + self.query[:120] if self.query else ''}"
                f" [{self.what}] headers={headers} body={shown!r}")


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    error: str = ""


def send(api: str, probe: Probe) -> Answer:
    url = api + probe.path + (f"?{probe.query}" if probe.query else "")
    try:
        if probe.raw:
            return _send_raw(api, probe)
        body = probe.body() if callable(probe.body) else probe.body
        try:
            # a new connection each time: no race with the server closing an idle one
            response = requests.request(probe.method, url, headers=probe.headers, data=body,
                                        timeout=TIMEOUT, allow_redirects=False)
        except requests.exceptions.InvalidHeader:  # requests refuses to send it: a socket will
            body = b"".join(body) if body is not None and not isinstance(body, bytes) else body
            return _send_raw(api, Probe(probe.endpoint, probe.method, probe.path, probe.query,
                                        probe.headers, body, probe.what, True))
        return Answer(response.status_code, dict(response.headers), response.content)
    except (requests.RequestException, OSError, http.client.HTTPException) as exc:
        return Answer(0, {}, b"", f"{type(exc).__name__}: {exc}")


def _send_raw(api: str, probe: Probe) -> Answer:
    """The request line and headers exactly as given (no client-side normalisation)."""
    host, port = urlsplit(api).hostname, urlsplit(api).port
    target = probe.path + (f"?{probe.query}" if probe.query else "")
    target = re.sub(r"[\x00-\x20\x7f]", lambda m: f"%{ord(m.group()):02X}", target)
    body = probe.body if isinstance(probe.body, bytes) else b""
    lines = [f"{probe.method} ".encode() + target.encode("utf-8", "surrogateescape")
             + b" HTTP/1.1", f"Host: {host}:{port}".encode(), b"Connection: close",
             f"Content-Length: {len(body)}".encode()]
    for name, value in probe.headers.items():
        lines.append(name.encode() + b": " + (value if isinstance(value, bytes) else
                                               value.encode("latin-1", "replace")))
    with socket.create_connection((host, port), timeout=TIMEOUT) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        response = http.client.HTTPResponse(sock, method=probe.method)
        response.begin()
        return Answer(response.status, dict(response.getheaders()), response.read())


# -- values of every shape -----------------------------------------------------------------
def _junk_text(rng: random.Random, n: int | None = None) -> str:
    alphabet = ["a", "Z", "0", "9", "-", "_", ".", "/", "\\", "%", "?", "#", " ", "\t", "\n",
                "\x00", "\x7f", "é", "ß", "ジ", "\u202e", "\ufeff", "\U0001f600", "\ufffd", "'",
                '"', "<", ">", "&", ":", ";", "="]
    return "".join(rng.choice(alphabet) for _ in range(n if n is not None else rng.randint(0, 24)))


def random_json(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 3 or roll < 0.45:
        return rng.choice([None, True, False, 0, -1, 1, 2**63, -(2**64), 10**30, 1.5, -0.0,
                           1e308, 512, 16384, 16385, "", "depth_png", "heatmap_png",
                           "s3://bucket/key.jpg", _junk_text(rng), "\ud800", "\udcff" * 3,
                           "a" * rng.choice([1, 255, 1025, 5000])])
    if roll < 0.7:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ["outputs", "max_side", "keys", "source", "uploads", "options", "name", "sha256",
            "filename", "", "\ud800", _junk_text(rng, 4)]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def deep_json(rng: random.Random) -> bytes:
    n = rng.choice([10, 63, 64, 65, 100, 999, 1000, 3000, 20000, 100000])
    shape = rng.choice(["list", "object", "mixed", "unbalanced", "in_options", "in_string"])
    if shape == "list":
        return b"[" * n + b"]" * n
    if shape == "object":
        return b'{"a":' * n + b"1" + b"}" * n
    if shape == "mixed":
        return b'[{"x":' * (n // 2) + b"null" + b"}]" * (n // 2)
    if shape == "unbalanced":
        return b"[" * n
    if shape == "in_options":
        return b'{"uploads": [], "options": ' + b"[" * n + b"]" * n + b"}"
    return b'{"keys": ["' + b"[" * n + b'"]}'


def json_bytes(rng: random.Random, value: Any) -> bytes:
    """JSON text: ASCII with escapes, or UTF-8 as is (lone surrogates: invalid UTF-8)."""
    if rng.random() < 0.5:
        return json.dumps(value).encode()
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def huge_numbers(rng: random.Random) -> bytes:
    return rng.choice([b"1" * 5000, b"-" + b"9" * 4301, b"1e999999", b"-1e-999999", b"NaN",
                       b"Infinity", b'{"max_side": ' + b"9" * 5000 + b"}",
                       b'{"options": {"max_side": 1e400}, "uploads": []}', b"0" * 100,
                       b'{"sha256": [' + b",".join([b"1" * 4000] * 3) + b"]}"])


def invalid_utf8(rng: random.Random) -> bytes:
    return rng.choice([b'{"a": "\xff\xfe"}', b"\xff\xfe{\x00}", b'{"sha256": ["\xed\xa0\x80"]}',
                       b'{"filename": "\xc0\xaf.zip"}', b'\xef\xbb\xbf{"uploads": []}',
                       b'{"uploads": [{"name": "\x80", "sha256": "' + b"0" * 64 + b'"}]}'])


def junk_content_type(rng: random.Random) -> str:
    return rng.choice(["application/json", "application/json; charset=latin-1",
                       "application/json; charset=utf-16", "application/problem+json",
                       "text/plain", "text/json", "application/x-www-form-urlencoded",
                       "multipart/form-data", "multipart/form-data; boundary=",
                       "multipart/form-data; boundary=\"\"", "multipart/mixed; boundary=x",
                       "application/octet-stream", "image/jpeg", "", ";;;", "\xff/\xfe",
                       "application/json; boundary=x", "*/*"])


def multipart(parts: list[tuple[bytes, bytes | None, bytes | None, bytes]],
              boundary: bytes = b"fuzzBOUNDARY") -> tuple[bytes, str]:
    out = io.BytesIO()
    for name, filename, content_type, data in parts:
        out.write(b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"" + name + b'"')
        if filename is not None:
            out.write(filename if filename.startswith(b"; ") else b'; filename="' + filename + b'"')
        out.write(b"\r\n")
        if content_type is not None:
            out.write(b"Content-Type: " + content_type + b"\r\n")
        out.write(b"\r\n" + data + b"\r\n")
    out.write(b"--" + boundary + b"--\r\n")
    return out.getvalue(), f"multipart/form-data; boundary={boundary.decode()}"


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def filenames(rng: random.Random) -> bytes | None:
    return rng.choice([None, b"a.jpg", b"", b"\xed\xa0\x80.jpg", b"\xed\xb3\xbf\xed\xb3\xbf",
                       b"\xff\xfe.jpg", "ü-ジ.jpg".encode(), b"../../etc/passwd",
                       b"/abs/x.jpg", b"C:\\win\\x.jpg", b"x" * 5000 + b".jpg", b'a\\"b.jpg',
                       b"a\x00b.jpg", b"%ED%A0%80.jpg", b"; filename*=UTF-8''%ED%A0%80.jpg",
                       b"; filename*=UTF-8''%FF%FE.zip", b"; filename*=bogus''x.jpg",
                       b"; filename=", b".zip", b"a.tar.gz", b"\r.jpg", b"\t\x0b.jpg"])


def option_junk(rng: random.Random) -> Any:
    return rng.choice([{"outputs": [[1]]}, {"outputs": [{}]}, {"outputs": "depth_png"},
                       {"outputs": None}, {"outputs": []}, {"outputs": [None]},
                       {"outputs": ["depth_png", 1]}, {"outputs": {"depth_png": 1}},
                       {"outputs": ["depth_png"] * 1000}, {"outputs": ["nope"]},
                       {"outputs": [True]}, {"outputs": 0}, {"outputs": False},
                       {"max_side": 1e308}, {"max_side": -1}, {"max_side": 0},
                       {"max_side": 10**400}, {"max_side": True}, {"max_side": "512"},
                       {"max_side": [1]}, {"max_side": 512.0}, {"max_side": 16384},
                       {"x": 1}, {"": None}, [], "str", 1, None, "", "null", "[]", "{}",
                       '{"outputs": [[1]]}', '{"outputs": [{}]}', "[" * 5000, "\ud800",
                       {"outputs": ["depth_png"], "max_side": 64}, random_json(rng)])


def option_field(rng: random.Random) -> bytes:
    value = option_junk(rng)
    text = value if isinstance(value, str) else json.dumps(value)
    return rng.choice([text.encode("utf-8", "surrogatepass"), b"\xff\xfe\xfd",
                       b"[" * 100000, b'{"outputs": ["depth_png"]}', b"", b"\x00",
                       text.encode("utf-8", "surrogatepass") * 2])


def job_json(rng: random.Random, world: World) -> Any:
    entry = rng.choice([{"name": "a.jpg", "sha256": world.digest},
                        {"name": rng.choice(["\ud800", "", "x" * 1025, "x" * 1024, 1, None,
                                             ["a"], {"a": 1}, "../../x", "a\x00b", "ü"]),
                         "sha256": world.digest},
                        {"name": "a.jpg", "sha256": rng.choice([world.digest.upper(), 1, None,
                                                                world.digest + "\n", [],
                                                                "0" * 64, "g" * 64])},
                        {"name": "a.jpg"}, {"sha256": world.digest}, [], "a", None])
    kind = rng.choice(["uploads", "keys", "source", "mixed", "random", "options"])
    if kind == "uploads":
        body: Any = {"uploads": rng.choice([[entry], [entry] * rng.randint(2, 40), entry, [],
                                            None, "x", {"a": entry}])}
    elif kind == "keys":
        body = {"keys": rng.choice([["s3://bucket/k.jpg"], [], None, "s3://b/k.jpg", [1], [[]],
                                    ["http://169.254.169.254/"], ["file:///etc/passwd"],
                                    ["s3://" + "a" * 3000], ["s3://b/\ud800.jpg"],
                                    ["s3://b/x.zip"], ["../../etc"], [{}],
                                    [f"{world.own}inputs/{world.digest[:2]}/{world.digest}"],
                                    [world.own + "x.zip", world.own + "a.jpg"],
                                    [world.own + "../bob/x.jpg"], [world.own + "%2e%2e/x"]])}
    elif kind == "source":
        body = {"source": rng.choice([world.own, world.own + "in/", world.own + "../",
                                      "s3://bucket/", "", None, 1, [], {}, "s3://b/\ud800/",
                                      "file:///", "s3://" + "x" * 4000, "gs://b/", "\x00"])}
    elif kind == "mixed":
        body = {"uploads": [entry], "keys": ["s3://b/k.jpg"]}
    elif kind == "options":
        body = {"uploads": [{"name": "o.jpg", "sha256": world.digest}],
                "options": option_junk(rng)}
    else:
        body = random_json(rng)
    if isinstance(body, dict) and rng.random() < 0.3:
        body["options"] = option_junk(rng)
    return body


# -- path parameters -----------------------------------------------------------------------
def job_ids(rng: random.Random, world: World) -> list[str]:
    """Encoded path segments naming jobs: real ones, their variants, junk."""
    alice = world.alice_job
    return [alice, world.bob_job, f"{rng.getrandbits(128):032x}", "0" * 32, alice.upper(), alice[:-1],
            alice + "0", alice + ":items", alice + ":items:0", quote(alice + "\n"), alice + "%00",
            alice + "%0a", " " + alice, "..", "%2e%2e", "%2E%2E%2F%2E%2E", ".", "%ff%fe",
            "%", "a%zz", quote("ジョブ"), quote("\U0001f600"), "x" * 3000, "-1", "null",
            quote("df:job:" + alice), "*", quote(alice + "*"), "%C0%AF", "%ED%A0%80",
            quote(_junk_text(rng))]


def path_values(name: str, converter: str, rng: random.Random, world: World) -> list[str]:
    if name == "job_id":
        return job_ids(rng, world)
    if name == "index":
        return ["0", "1", "00", "-1", "9" * 30, "9" * 3000, "1e3", "abc", quote("٣"), "%00",
                str(2**63), "0x1"]
    if name == "digest":
        return [world.digest, hashlib.sha256(rng.randbytes(8)).hexdigest(), world.digest.upper(),
                world.digest[:-1], world.digest + "0", world.digest + "%0a", "..", "%ff",
                quote("ジ" * 64), "g" * 64, "0" * 64, "x" * 3000, quote(_junk_text(rng))]
    if name == "filename" and converter == "PathConverter":  # static files
        return ["app.js", "style.css", "nope.js", "../__init__.py", "%2e%2e/__init__.py",
                "..%2f..%2fsettings.py", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "a/../../b",
                "x" * 3000, "%00", "%ff", quote("ジ.js"), "app.js%00.png", "/etc/passwd",
                "app.js/", quote(_junk_text(rng))]
    if name == "filename":
        return [*ARTIFACT_FILES, "depth.png%00", "..", "%2e%2e", "x" * 3000, "%ff", "", "a",
                quote("ジ.png"), "depth.PNG", quote(_junk_text(rng))]
    return ["x", "..", "%ff", "x" * 3000, quote(_junk_text(rng)), "0"]


def build_path(rule: Rule, rng: random.Random, world: World) -> str:
    converters = {name: type(conv).__name__ for name, conv in rule._converters.items()}
    return ARGUMENT.sub(lambda m: rng.choice(path_values(m.group(1), converters.get(m.group(1),
                                                                                 ""), rng, world)),
                        rule.rule)


def fill(rule: Rule, values: dict[str, str]) -> str:
    return ARGUMENT.sub(lambda m: values[m.group(1)], rule.rule)


def query_junk(rng: random.Random) -> str:
    if rng.random() < 0.4:
        return ""
    keys = ["offset", "limit", "inline", "max_side", "offset", "x", "", "%ff"]
    values = ["", "0", "1", "-1", "1e99", "abc", "9" * 20, "9" * 1500, "1_000", quote("٣"),
              "%00", "%ff", "1.5", "0x10", " 1", "true", "inline", "2", str(2**63), "-0",
              quote(_junk_text(rng))]
    return "&".join(f"{rng.choice(keys)}={rng.choice(values)}" for _ in range(rng.randint(1, 4)))


def header_junk(rng: random.Random, tenant_headers: dict[str, str]) -> dict[str, Any]:
    headers = dict(tenant_headers)
    roll = rng.random()
    if roll < 0.06:
        headers.pop("Authorization")
    elif roll < 0.12:
        headers["Authorization"] = rng.choice(["Bearer", "Bearer ", "Basic abc", "bearer x",
                                               "Bearer " + "k" * 3000, b"Bearer \xff\xfe",
                                               "Bearer key-alice-fuzz-5e1b9e", "Bearer\tx"])
    if rng.random() < 0.1:
        headers["Host"] = rng.choice(["localhost", "[::1]", "[::1", "evil.example:80",
                                      "localhost:abc", "127.0.0.1:99999", b"\xff\xfe", "a b"])
    if rng.random() < 0.1:
        headers["Idempotency-Key"] = rng.choice(["k", "", " ", "k" * 3000, b"\xff\xfe",
                                                 "\t", "ジ".encode()])
    if rng.random() < 0.05:
        headers["Accept"] = rng.choice(["*/*", "text/html", b"\xff"])
    if rng.random() < 0.05:
        headers[rng.choice(["Range", "If-None-Match", "If-Modified-Since", "If-Range"])] = \
            rng.choice(["bytes=0-0", "bytes=999999999-", "bytes=-1", "bytes=5-1", "bytes=x",
                        "*", "W/\"x\"", "Mon, 32 Foo 99999 99:99:99 GMT", b"\xff"])
    return headers


# -- bodies ----------------------------------------------------------------------------------
def chunks_of(data: bytes, size: int) -> Callable[[], Iterator[bytes]]:
    def generate() -> Iterator[bytes]:
        for start in range(0, len(data), size):
            yield data[start:start + size]
    return generate


def body_for(kind: str, rng: random.Random, world: World) -> tuple[bytes | Any, str, str]:
    """(body, Content-Type or "", what) for an endpoint whose body is of ``kind``."""
    roll = rng.random()
    if roll < 0.08:
        return None, "", "no body"
    if roll < 0.13:
        return b"", rng.choice(["", "application/json", "multipart/form-data; boundary=x"]), \
            "empty body"
    if roll < 0.25:
        return deep_json(rng), "application/json", "deep JSON"
    if roll < 0.30:
        return huge_numbers(rng), "application/json", "huge numbers"
    if roll < 0.35:
        return invalid_utf8(rng), "application/json", "invalid UTF-8"
    if roll < 0.42:
        return json_bytes(rng, random_json(rng)), junk_content_type(rng), "random JSON, odd type"
    if roll < 0.47:
        return (b"options=" + rng.choice([b"%ff", b"\xff", b"[[[", b"%5B" * 3000])
                + b"&file=x"), "application/x-www-form-urlencoded", "urlencoded junk"
    if roll < 0.52:
        return rng.randbytes(rng.randint(1, 3000)), junk_content_type(rng), "random bytes"
    if roll < 0.60 or kind == "none" and roll < 0.8:
        return multipart_junk(rng, world)
    if kind == "job":
        if roll < 0.8:
            return json_bytes(rng, job_json(rng, world)), "application/json", "job JSON"
        return multipart_junk(rng, world)
    if kind == "check":
        value = rng.choice([{"sha256": []}, {"sha256": [world.digest]}, {"sha256": world.digest},
                            {"sha256": [world.digest] * 5001}, {"sha256": [1, None]},
                            {"sha256": [[world.digest]]}, {"sha256": [{}]}, {"sha256": None},
                            {"sha256": [world.digest + "\n"]}, {"sha256": ["\ud800"]},
                            {"sha256": [world.digest.upper()]}, {}, [], "x", 1, None,
                            random_json(rng)])
        return json_bytes(rng, value), "application/json", "check JSON"
    if kind == "presign":
        name = rng.choice(["a.zip", "a.tar.gz", "scans.TGZ", "../a.zip", "a/b.zip", ".zip",
                           "\ud800.zip", "a" * 10000 + ".zip", "a\x00.zip", "a\n.zip",
                           "a\\b.zip", "a.jpg", "", 1, None, [], {}, "ジ.zip", " .zip"])
        return json_bytes(rng, rng.choice([{"filename": name}, {"filename": name, "x": 1},
                                           [name], name])), "application/json", "presign JSON"
    if kind == "raw":
        data = rng.choice([world.photo, b"x", rng.randbytes(rng.randint(1, 100000)),
                           b"\x00" * 1000])
        if rng.random() < 0.4:
            return chunks_of(data, rng.choice([1, 7, 4096, 65536])), "", "chunked raw"
        return data, rng.choice(["", "application/octet-stream", "application/json",
                                 "multipart/form-data; boundary=x"]), "raw bytes"
    data = json_bytes(rng, random_json(rng))
    return chunks_of(data, rng.choice([1, 3, 1024])), "application/json", "chunked JSON"


def multipart_junk(rng: random.Random, world: World) -> tuple[bytes, str, str]:
    contents = [world.photo, world.photo[:40], b"", rng.randbytes(200), b"\xff\xd8\xff" + b"0" * 500,
                zip_of({"a.jpg": world.photo, "../b.jpg": world.photo}), b"PK\x03\x04junk",
                b"\x1f\x8b\x08junk"]
    parts = []
    for _ in range(rng.randint(0, 4)):
        name = rng.choice([b"file", b"file", b"options", b"FILE", b"", b"\xff", b"file[]"])
        if name == b"options":
            parts.append((name, None, rng.choice([None, b"text/plain; charset=bogus",
                                                  b"text/plain; charset=utf-16"]),
                          option_field(rng)))
        else:
            parts.append((name, filenames(rng), rng.choice([None, b"image/jpeg", b"\xff/\xfe",
                                                            b"application/zip"]),
                          rng.choice(contents)))
    if rng.random() < 0.3:
        parts.append((b"options", None, None, option_field(rng)))
    if rng.random() < 0.05:
        parts.append((b"options", None, None, b"{" * (2 * MB)))  # over MAX_FORM_MEMORY_SIZE
    if rng.random() < 0.05:
        parts += [(b"file", b"%d.jpg" % i, b"image/jpeg", world.photo[:64])
                  for i in range(rng.choice([30, 1001]))]
    body, content_type = multipart(parts)
    if rng.random() < 0.15:
        body = body[:rng.randint(0, len(body))]  # cut short
    if rng.random() < 0.1:
        content_type = rng.choice(["multipart/form-data; boundary=other", "multipart/form-data",
                                   "application/json"])
    return body, content_type, "multipart"


def known_cases(rule: Rule, method: str, world: World) -> Iterator[Probe]:
    """Requests that once gave a 5xx, sent whatever the seed."""
    kind = BODY_KIND[rule.endpoint]
    if kind in ("job", "check", "presign") and method == "POST":
        for n in (1000, 5000, 100000):
            yield Probe(rule.endpoint, method, rule.rule, "", {**ALICE, "Content-Type":
                        "application/json"}, b"[" * n + b"]" * n, f"known: {n} deep")
    if kind == "job" and method == "POST":
        upload = {"name": "k.jpg", "sha256": world.digest}
        for options in ({"outputs": [[1]]}, {"outputs": [{}]}):
            yield Probe(rule.endpoint, method, rule.rule, "", {**ALICE, "Content-Type":
                        "application/json"}, json.dumps({"uploads": [upload], "options":
                                                         options}).encode(), "known: options")
            body, content_type = multipart([(b"file", b"k.jpg", b"image/jpeg", world.photo),
                                            (b"options", None, None,
                                             json.dumps(options).encode())])
            yield Probe(rule.endpoint, method, rule.rule, "", {**ALICE, "Content-Type":
                        content_type}, body, "known: options field")
    if "job_id" in rule.arguments:
        path = fill(rule, {"job_id": world.alice_job + ":items", "index": "0",
                           "filename": "depth.png"})
        yield Probe(rule.endpoint, method, path, "", dict(BOB), None, "known: :items")


def probes_for(rule: Rule, method: str, rng: random.Random, world: World) -> Iterator[Probe]:
    yield from known_cases(rule, method, world)
    kind = BODY_KIND[rule.endpoint]
    for _ in range(PER_METHOD.get(method, 20)):
        headers = header_junk(rng, rng.choice([ALICE, ALICE, BOB]))
        body, content_type, what = body_for(kind, rng, world)
        if content_type:
            headers["Content-Type"] = content_type
        if method in ("GET", "HEAD", "OPTIONS") and rng.random() < 0.7:
            body, what = None, "no body"
        raw = rng.random() < 0.04 and not callable(body)
        yield Probe(rule.endpoint, method, build_path(rule, rng, world), query_junk(rng),
                    headers, body, what + (", raw socket" if raw else ""), raw)


# -- checks ----------------------------------------------------------------------------------
def error_shape_problem(answer: Answer) -> str | None:
    try:
        body = json.loads(answer.body)
    except ValueError:
        return f"not JSON: {answer.body[:200]!r}"
    error = body.get("error") if isinstance(body, dict) else None
    if not (isinstance(body, dict) and set(body) == {"error"} and isinstance(error, dict)
            and set(error) == {"code", "message"} and isinstance(error.get("code"), str)
            and isinstance(error.get("message"), str)):
        return f"not the error shape: {answer.body[:200]!r}"
    return None


def endpoint_of(world: World, probe: Probe) -> str | None:
    """Which endpoint the server routes this request to (None: no route)."""
    try:
        rule, _ = world.adapter.match(unquote(probe.path, errors="replace"), probe.method,
                                      return_rule=True)
        return rule.endpoint
    except HTTPException:
        return None
    except Exception:  # a redirect or anything else: not this rule
        return None


def gunicorn_refusal(answer: Answer) -> bool:
    """gunicorn's own HTML answer to a request it will not parse (a request line or header
    over its limits, a malformed header): the app never saw it, it answers JSON."""
    return answer.status in (400, 414, 431) and answer.body.lstrip().startswith(b"<html>")


def api_tracebacks(world: World, limit: int = 6) -> str:
    lines = world.log().splitlines()
    errors = [line for line in lines if "Traceback" in line or "unhandled error" in line]
    return "\n".join(errors[-limit:])[-6000:]


def run_all(world: World, probes: list[Probe]) -> list[tuple[Probe, Answer]]:
    with ThreadPoolExecutor(PARALLEL) as pool:
        return list(zip(probes, pool.map(lambda p: send(world.api, p), probes)))


# -- the tests -------------------------------------------------------------------------------
def test_every_route_survives_fuzzing(world):
    print(f"fuzz seed {SEED} (DEPTHFLEET_FUZZ_SEED replays another)")
    rng = random.Random(SEED)
    unclassified = sorted({r.endpoint for r in world.rules} - set(BODY_KIND))
    assert not unclassified, f"routes the fuzz does not know how to exercise: {unclassified}"
    targets = [(rule, method) for rule in world.rules for method in sorted(rule.methods)]
    probes = [p for rule, method in targets for p in probes_for(rule, method, rng, world)]
    for rule in world.rules:  # methods a route does not take: 405 with Allow, same shape
        for method in sorted({"GET", "POST", "PUT", "DELETE", "PATCH", "TRACE"} - rule.methods):
            probe = list(probes_for(rule, "OPTIONS", rng, world))[-1]
            probes.append(Probe(probe.endpoint, method, probe.path, probe.query, probe.headers,
                                probe.body, probe.what + ", method not allowed", probe.raw))
    started = time.monotonic()
    results = run_all(world, probes)
    elapsed = time.monotonic() - started

    failures: list[str] = []
    routed: Counter[tuple[str, str]] = Counter()
    for probe, answer in results:
        matched = endpoint_of(world, probe)
        if matched:
            routed[(matched, probe.method)] += 1
        if answer.error:
            failures.append(f"no answer ({answer.error}): {probe.describe()}")
        elif answer.status >= 500:
            failures.append(f"{answer.status} {answer.body[:200]!r}: {probe.describe()}")
        elif (probe.path.startswith("/v1") and 400 <= answer.status < 500
              and probe.method != "HEAD" and not gunicorn_refusal(answer)):
            problem = error_shape_problem(answer)
            if problem:
                failures.append(f"{answer.status} {problem}: {probe.describe()}")
        if answer.status == 405 and "Allow" not in answer.headers:
            failures.append(f"405 without Allow: {probe.describe()}")

    # Every route was reached by requests the server routed to it, unless an identical
    # earlier rule shadows it (Flask's app static and the web blueprint's, both /static/...).
    shadowed = {(r.endpoint, m) for i, r in enumerate(world.rules) for m in r.methods
                if any(o.rule == r.rule and m in o.methods for o in world.rules[:i])}
    unreached = [t for t in ((r.endpoint, m) for r, m in targets)
                 if not routed[t] and t not in shadowed]
    statuses = Counter(a.status for _, a in results)
    refused = sum(gunicorn_refusal(a) for _, a in results)
    print(f"{len(results)} requests in {elapsed:.1f}s over {len(targets)} route methods; "
          f"statuses {dict(sorted(statuses.items()))}; {refused} refused by gunicorn itself")
    assert not unreached, f"route methods no fuzz request reached: {unreached}"
    assert not failures, (f"{len(failures)} of {len(results)} requests failed (seed {SEED}):\n"
                          + "\n".join(failures[:25])
                          + f"\n-- API log --\n{api_tracebacks(world)}")
    # and no input got through to the last-resort handlers (RecursionError, UnicodeError)
    caught_late = [line for line in world.log().splitlines() if "refused a request" in line]
    assert not caught_late, "inputs no validation caught:\n" + "\n".join(caught_late[:5])
    assert requests.get(world.api + "/readyz", timeout=TIMEOUT).status_code == 200


def _variants(rule: Rule, job_id: str, rng: random.Random) -> list[tuple[str, str, str]]:
    """(path, query, what) for a route naming ``job_id``, with the job's id in every spot
    it can take: plain, with suffixes, in other routes' shapes, odd query strings."""
    suffixes = ["", ":items", ":items:0", "/", "%00", "%0a", ".json", "*", "/items", ":0",
                "/../" + job_id, "%2f", "?", "#x"]
    out = [(fill(rule, {"job_id": job_id + suffix, "index": "0", "filename": "depth.png"}), "",
            f"suffix {suffix!r}") for suffix in suffixes]
    out += [(fill(rule, {"job_id": job_id, "index": "0", "filename": "depth.png"}), query,
             f"query {query!r}") for query in ("offset=0&limit=1", "offset=-1", "limit=abc",
                                                "offset=1e99", "inline=1", "offset=" + "9" * 99)]
    for index in ("0", "1", "99999999999999999999", "abc") if "index" in rule.arguments else ():
        for filename in (*ARTIFACT_FILES, "x"):
            path = fill(rule, {"job_id": job_id, "index": index, "filename": filename})
            out.append((path, rng.choice(["", "inline=1", "offset=0&limit=1", "offset=-1",
                                          "limit=abc", "offset=1e99", "max_side=64",
                                          "max_side=0", "max_side=-1", "max_side=" + "9" * 99,
                                          "max_side=abc&inline=1"]),
                        f"index {index} file {filename}"))
    return list(dict.fromkeys(out))


def test_other_tenants_jobs_answer_like_missing_ones(world):
    """For every route naming a job, every variant: B on A's job == B on a never-seen id."""
    rng = random.Random(SEED + 1)
    routes = [(rule, method) for rule in world.rules if "job_id" in rule.arguments
              for method in sorted(rule.methods)]
    assert routes, "no route names a job?"
    probes, pairs = [], []
    for rule, method in routes:
        for owner, asker, job in (("alice", BOB, world.alice_job), ("bob", ALICE, world.bob_job)):
            never = f"{rng.getrandbits(128):032x}"
            for path, query, what in _variants(rule, job, rng):
                theirs = Probe(rule.endpoint, method, path, query, dict(asker), None,
                               f"{owner}'s job, {what}")
                missing = Probe(rule.endpoint, method, path.replace(job, never),
                                query.replace(job, never), dict(asker), None,
                                f"a job that never existed, {what}")
                pairs.append((len(probes), len(probes) + 1))
                probes += [theirs, missing]
    results = run_all(world, probes)

    def key(answer: Answer) -> tuple[Any, ...]:
        try:
            body = json.loads(answer.body) if answer.body else None
        except ValueError:
            body = answer.body[:100]
        return answer.status, body, answer.error

    leaks = []
    for a, b in pairs:
        (theirs, got), (missing, expected) = results[a], results[b]
        if key(got) != key(expected) or got.status >= 500:
            leaks.append(f"{theirs.describe()}\n   -> {got.status} {got.body[:160]!r}\n"
                         f"   a never-seen id -> {expected.status} {expected.body[:160]!r}")
    assert not leaks, f"{len(leaks)} of {len(pairs)} answers differ:\n" + "\n".join(leaks[:20])
    own = requests.get(f"{world.api}/v1/jobs/{world.alice_job}", headers=ALICE, timeout=TIMEOUT)
    assert own.status_code == 200, "the audit needs alice's job to exist for alice"


def test_a_body_over_the_limit_is_refused_chunked_or_not(world):
    limit = MAX_UPLOAD_MB * MB
    head = os.urandom(limit)
    body = head + os.urandom(15 * MB)
    digest_of_head = hashlib.sha256(head).hexdigest()
    url = f"{world.api}/v1/uploads/{digest_of_head}"
    for what, data in (("chunked", chunks_of(body, MB)), ("Content-Length", body)):
        answer = requests.put(url, data=data() if callable(data) else data, headers=ALICE,
                              timeout=TIMEOUT)
        assert answer.status_code == 413, (what, answer.status_code, answer.text)
        assert answer.json()["error"]["code"] == "file_too_large", (what, answer.text)
    # at the limit exactly, chunked: accepted whole
    answer = requests.put(url, data=chunks_of(head, 3 * MB + 17)(), headers=ALICE,
                          timeout=TIMEOUT)
    assert answer.status_code == 201, answer.text
    assert answer.json()["size"] == limit
    # a JSON body over the limit, chunked, on every JSON route
    big_json = b'{"sha256": [' + b'"' + b"0" * (limit + MB) + b'"]}'
    for path in ("/v1/uploads/check", "/v1/uploads/presign", "/v1/jobs"):
        answer = requests.post(world.api + path, data=chunks_of(big_json, MB)(), timeout=TIMEOUT,
                               headers={**ALICE, "Content-Type": "application/json"})
        assert answer.status_code == 413, (path, answer.status_code, answer.text)
        assert answer.json()["error"]["code"] == "file_too_large", (path, answer.text)
