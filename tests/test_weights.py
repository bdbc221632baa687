"""Resolving the configured checkpoint: local, S3 (a real server) and HTTPS (a local server).

Each remote source is fetched once per cache (the servers count GETs), checked against the
pinned or first-use sha256, and a failed or refused download leaves nothing in the cache.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import ssl
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import MotoServer
from depthfleet.shared.errors import WeightsError
from depthfleet.shared.model.weights import describe_weights, resolve_weights
from depthfleet.shared.settings import Settings

LOOPBACK = ipaddress.ip_address("127.0.0.1")


@dataclass
class FileServer:
    """What the HTTPS test server serves (path -> body), and how often each path was fetched."""

    port: int = 0
    bodies: dict[str, bytes] = field(default_factory=dict)
    truncated: set[str] = field(default_factory=set)  # send half the body, then hang up
    gets: dict[str, int] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def serve(self, path: str, body: bytes, truncated: bool = False) -> str:
        self.bodies[path] = body
        if truncated:
            self.truncated.add(path)
        return self.url(path)


def handler_for(files: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            files.gets[self.path] = files.gets.get(self.path, 0) + 1
            body = files.bodies.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.path in files.truncated:
                body = body[: len(body) // 2]
                self.close_connection = True
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA: (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "depthfleet test mirror")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(LOOPBACK)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def https_server(certificate: tuple[Path, Path]) -> Iterator[FileServer]:
    files = FileServer()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(files))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    files.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield files
    server.shutdown()
    server.server_close()


@pytest.fixture()
def trusted_mirror(https_server: FileServer, certificate, monkeypatch) -> FileServer:
    """The HTTPS server, trusted the way an operator trusts an internal CA."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate[0]))
    return https_server


@pytest.fixture()
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cache_contents(cache_dir: Path) -> list[str]:
    """Files in the weights cache, without the lock file."""
    folder = cache_dir / "weights"
    files = [p for p in folder.rglob("*") if p.is_file() and p.name != ".lock"]
    return sorted(str(p.relative_to(folder)) for p in files)


def unique_path(suffix: str = ".pt") -> str:
    return f"/{uuid.uuid4().hex}{suffix}"


def test_local_path_is_used_in_place(checkpoint_path: Path, checkpoint_sha256: str, cache_dir: Path):
    weights = resolve_weights(
        Settings(weights=str(checkpoint_path), weights_sha256=checkpoint_sha256, cache_dir=cache_dir)
    )
    assert (weights.path, weights.sha256, weights.trust) == (checkpoint_path, checkpoint_sha256, "pinned")
    assert not cache_dir.exists()


def test_local_path_with_wrong_hash_is_refused(checkpoint_path: Path, checkpoint_sha256: str, cache_dir):
    settings = Settings(weights=str(checkpoint_path), weights_sha256="0" * 64, cache_dir=cache_dir)
    with pytest.raises(WeightsError, match=f"has sha256 {checkpoint_sha256}, but .* expects 0{{64}}"):
        resolve_weights(settings)


def test_missing_local_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        resolve_weights(Settings(weights=str(tmp_path / "nope.pt"), cache_dir=tmp_path))


def test_unsupported_scheme_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="use a local path, s3://, https:// or http://"):
        resolve_weights(Settings(weights="ftp://example.com/w.pt", cache_dir=tmp_path))


@pytest.mark.usefixtures("s3_credentials")
def test_s3_download_is_verified_and_cached(
    s3_server: str, moto_server: MotoServer, checkpoint_path: Path, checkpoint_sha256: str, cache_dir: Path
) -> None:
    bucket = f"weights-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket=bucket)
    s3.upload_file(str(checkpoint_path), bucket, "midas/small.pt")
    settings = Settings(
        weights=f"s3://{bucket}/midas/small.pt",
        weights_sha256=checkpoint_sha256,
        s3_endpoint=s3_server,
        cache_dir=cache_dir,
    )
    first, second = resolve_weights(settings), resolve_weights(settings)
    assert first == second
    assert first.path == cache_dir / "weights" / f"{checkpoint_sha256}.pt"
    assert first.path.read_bytes() == checkpoint_path.read_bytes()
    assert moto_server.request_count("GET", f"/{bucket}/midas/small.pt") == 1


@pytest.mark.usefixtures("s3_credentials")
def test_missing_s3_object_is_refused(s3_server: str, cache_dir: Path) -> None:
    settings = Settings(weights="s3://no-such-bucket/w.pt", s3_endpoint=s3_server, cache_dir=cache_dir)
    with pytest.raises(WeightsError, match="could not download weights from s3://no-such-bucket/w.pt"):
        resolve_weights(settings)
    assert cache_contents(cache_dir) == []


def test_https_download_is_verified_and_cached(
    trusted_mirror: FileServer, checkpoint_path: Path, checkpoint_sha256: str, cache_dir: Path
) -> None:
    path = unique_path()
    url = trusted_mirror.serve(path, checkpoint_path.read_bytes())
    settings = Settings(weights=url, weights_sha256=checkpoint_sha256, cache_dir=cache_dir)
    first, second = resolve_weights(settings), resolve_weights(settings)
    assert first == second
    assert (first.sha256, first.source, first.trust) == (checkpoint_sha256, url, "pinned")
    assert trusted_mirror.gets[path] == 1
    assert checkpoint_sha256 in describe_weights(settings)


def test_untrusted_certificate_is_refused(https_server: FileServer, cache_dir: Path, monkeypatch):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    url = https_server.serve(unique_path(), b"weights")
    with pytest.raises(WeightsError, match="CERTIFICATE_VERIFY_FAILED"):
        resolve_weights(Settings(weights=url, cache_dir=cache_dir))


def test_wrong_pinned_hash_is_refused_and_not_cached(trusted_mirror: FileServer, cache_dir: Path):
    body = b"not the pinned checkpoint"
    url = trusted_mirror.serve(unique_path(), body)
    with pytest.raises(WeightsError, match=f"has sha256 {sha256(body)}, but .* expects a{{64}}"):
        resolve_weights(Settings(weights=url, weights_sha256="a" * 64, cache_dir=cache_dir))
    assert cache_contents(cache_dir) == []


def test_first_use_hash_is_recorded_and_enforced(trusted_mirror: FileServer, cache_dir: Path) -> None:
    path, original, replaced = unique_path(), b"original checkpoint", b"swapped checkpoint"
    settings = Settings(weights=trusted_mirror.serve(path, original), cache_dir=cache_dir)
    first = resolve_weights(settings)
    assert (first.sha256, first.trust) == (sha256(original), "first-use")
    assert resolve_weights(settings) == first
    assert trusted_mirror.gets[path] == 1

    first.path.unlink()  # the cache entry is gone, the first-use record stays
    trusted_mirror.serve(path, replaced)
    message = f"sha256 {sha256(replaced)}, but its first download had {sha256(original)}"
    with pytest.raises(WeightsError, match=message):
        resolve_weights(settings)
    assert [name for name in cache_contents(cache_dir) if name.endswith(".pt")] == []


def test_truncated_download_leaves_nothing_behind(trusted_mirror: FileServer, cache_dir: Path) -> None:
    url = trusted_mirror.serve(unique_path(), b"x" * 3_000_000, truncated=True)
    with pytest.raises(WeightsError, match="could not download weights from .*IncompleteRead"):
        resolve_weights(Settings(weights=url, cache_dir=cache_dir))
    assert cache_contents(cache_dir) == []


def test_concurrent_resolutions_download_once(trusted_mirror: FileServer, cache_dir: Path) -> None:
    path, body = unique_path(), b"checkpoint bytes" * 100_000
    settings = Settings(weights=trusted_mirror.serve(path, body), cache_dir=cache_dir)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: resolve_weights(settings), range(4)))
    assert {r.sha256 for r in results} == {sha256(body)}
    assert trusted_mirror.gets[path] == 1
