"""Real registries for the tests: CNCF distribution processes, a JWT token server, a fault proxy.

Everything listens on 127.0.0.1 on free ports and is stopped at the end of the session.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import http.client
import http.server
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

DISTRIBUTION = "/usr/bin/docker-registry"
USERS = {"alice": "alice-secret-pw", "bob": "bob-secret-pw"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def self_signed(directory: Path, name: str, dns: list[str], ips: list[str]) -> tuple[Path, Path]:
    """A self-signed certificate (its own CA) for the given names; returns (cert, key) paths."""
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0] if dns else name)])
    now = dt.datetime.now(dt.timezone.utc)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def libtrust_kid(public_key: Any) -> str:
    """The key id distribution expects in the JWT header: libtrust's fingerprint of the key."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


@dataclass
class TokenServer:
    """Issues RS256 JWTs: alice may push to alice/* and pull everything; bob may only pull;
    anonymous users may pull public/*."""

    directory: Path
    expires_in: int = 300
    issued: list[tuple[str, str]] = field(default_factory=list)  # (user, scope) per token
    service: str = "ormb-test-registry"
    issuer: str = "ormb-test-issuer"

    def __post_init__(self) -> None:
        self.key = _key()
        self.kid = libtrust_kid(self.key.public_key())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ormb test token signer")])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=7)).sign(self.key, hashes.SHA256())
        )
        self.bundle = self.directory / "token-signer.pem"
        self.bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.port = free_port()
        self.realm = f"http://127.0.0.1:{self.port}/token"
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                user = server._user(self.headers.get("Authorization", ""))
                if user is False:
                    self.send_response(401)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"details":"invalid username or password"}')
                    return
                token = server._token(user or "", query.get("scope", []))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps({"token": token, "expires_in": server.expires_in}).encode())

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def _user(self, header: str) -> str | bool | None:
        if not header.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return user if USERS.get(user) == password else False

    def _allowed(self, user: str, name: str, actions: list[str]) -> list[str]:
        if user == "alice":
            return [a for a in actions if a == "pull" or name.startswith("alice/")]
        if user == "bob":
            return [a for a in actions if a == "pull"]
        return [a for a in actions if a == "pull" and name.startswith("public/")]

    def _token(self, user: str, scopes: list[str]) -> str:
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            self.issued.append((user, scope))
            access.append({"type": kind, "name": name, "actions": self._allowed(user, name, actions.split(","))})
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": user, "aud": self.service, "exp": now + self.expires_in,
                  "nbf": now - 5, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class Distribution:
    """A CNCF distribution (docker-registry) process on 127.0.0.1."""

    directory: Path
    auth: dict[str, Any] | None = None
    tls: tuple[Path, Path] | None = None
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        if shutil.which(DISTRIBUTION) is None and not Path(DISTRIBUTION).exists():
            raise RuntimeError(f"{DISTRIBUTION} is not installed; run scripts/test, which installs docker-registry")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.storage = self.directory / "storage"
        http_config: dict[str, Any] = {"addr": f"127.0.0.1:{self.port}", "secret": "ormb-tests"}
        if self.tls:
            http_config["tls"] = {"certificate": str(self.tls[0]), "key": str(self.tls[1])}
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)}, "delete": {"enabled": True}},
            "http": http_config,
        }
        if self.auth:
            config["auth"] = self.auth
        self.config = self.directory / "config.yml"
        self.config.write_text(json.dumps(config))  # JSON is YAML
        self.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.log = open(self.directory / "registry.log", "ab")
        self.process = subprocess.Popen([DISTRIBUTION, "serve", str(self.config)], stdout=self.log,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {(self.directory / 'registry.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("docker-registry did not start within 15 s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.log.close()


def htpasswd_file(directory: Path) -> Path:
    path = directory / "htpasswd"
    path.write_text("".join(
        f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()}\n"
        for user, password in USERS.items()
    ))
    return path


class FaultProxy:
    """An HTTP reverse proxy in front of a registry that can corrupt or cut responses, and counts uploads.

    ``corrupt_blobs``: flip a byte in every blob GET body.  ``cut_blob_once``: send half of the next
    blob GET body over 1 MiB, then close the connection.  ``on_upload_bytes``: called with the running total of
    upload bytes (PUT/PATCH bodies) as they arrive, so a test can stop the registry mid-push.  ``slow_blobs``:
    send every blob GET body at that many bytes per second (each connection); ``blob_bytes_sent`` counts them.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.corrupt_blobs = False
        self.cut_blob_once = False
        self.slow_blobs = 0
        self.blob_bytes_sent = 0
        self.on_upload_bytes: Callable[[int], bool] | None = None  # return False to cut the connection
        self.requests: list[tuple[str, str, int, str]] = []  # (method, path, body bytes, Range header)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = bytearray()
                while len(body) < length:
                    chunk = self.rfile.read(min(1 << 20, length - len(body)))
                    if not chunk:
                        break
                    body += chunk
                    if self.command in ("PUT", "PATCH") and proxy.on_upload_bytes is not None:
                        if not proxy.on_upload_bytes(len(chunk)):
                            self.close_connection = True
                            self.connection.shutdown(socket.SHUT_RDWR)
                            return
                proxy.requests.append((self.command, self.path, len(body), self.headers.get("Range", "")))
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                try:
                    upstream.request(self.command, self.path, body=bytes(body) if length else None, headers=headers)
                    response = upstream.getresponse()
                except OSError:
                    self.send_error(502)
                    return
                is_blob = self.command == "GET" and "/blobs/sha256:" in self.path and response.status in (200, 206)
                data = response.read()
                upstream.close()
                if is_blob and proxy.corrupt_blobs and data:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                cut = is_blob and proxy.cut_blob_once and len(data) > 1 << 20  # large blobs only
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if cut:
                    proxy.cut_blob_once = False
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if self.command == "HEAD":
                    return
                if not (is_blob and proxy.slow_blobs):
                    self.wfile.write(data)
                    return
                piece = 64 << 10
                for start in range(0, len(data), piece):
                    time.sleep(piece / proxy.slow_blobs)
                    try:
                        self.wfile.write(data[start:start + piece])
                        self.wfile.flush()
                    except OSError:  # the client went away
                        self.close_connection = True
                        return
                    proxy.blob_bytes_sent += len(data[start:start + piece])

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def uploaded(self) -> int:
        return sum(n for method, _, n, _ in self.requests if method in ("PUT", "PATCH"))

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


POLICY = """\
rules:
  - users: [alice]
    repositories: ["alice/*"]
    actions: [pull, push, delete]
  - users: ["*"]
    repositories: ["*"]
    actions: [pull]
  - users: [anonymous]
    repositories: ["public/*"]
    actions: [pull]
"""


ANONYMOUS_PULLS_EVERYTHING = """\
  - users: [anonymous]
    repositories: ["*"]
    actions: [pull]
"""


class EmbeddedRegistry:
    """``ormb registry serve`` as a real process (gunicorn), with the interface of :class:`Distribution`
    and, for token auth, of :class:`TokenServer` (``issued``, ``expires_in``), both read from or set
    through the process: the tokens issued come from its access log, a new lifetime restarts it.

    ``anonymous_pull``: anonymous users may pull every repository; said with ``--anonymous-pull``
    for Basic auth (no policy), and with an ``anonymous`` rule in the policy for Bearer (which
    refuses the flag)."""

    def __init__(self, directory: Path, *, auth: str | None = None, tls: tuple[Path, Path] | None = None,
                 port: int = 0, anonymous_pull: bool = False, **options: Any) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.auth, self.tls, self.anonymous_pull = auth, tls, anonymous_pull
        self.options = {"token_lifetime": 300, **options}
        self.port = port
        self.server: Any = None
        self.log_path = directory / "serve.log"
        self.start()

    def start(self) -> None:
        from ormb.server.serve import RegistryServer

        kwargs: dict[str, Any] = {}
        if self.auth in ("basic", "bearer"):
            kwargs["htpasswd"] = htpasswd_file(self.directory)
            kwargs["auth_scheme"] = self.auth
            if self.auth == "bearer":
                policy = self.directory / "policy.yaml"
                if not policy.exists():  # a test may have written its own
                    policy.write_text(POLICY + (ANONYMOUS_PULLS_EVERYTHING if self.anonymous_pull else ""))
                kwargs["policy"] = policy
            else:
                kwargs["anonymous_pull"] = self.anonymous_pull
        if self.tls:
            kwargs["tls_cert"], kwargs["tls_key"] = self.tls
        self.server = RegistryServer(self.directory / "root", f"127.0.0.1:{self.port}", log_path=self.log_path,
                                     **self.options, **kwargs).start()
        self.port = self.server.port  # port 0 at first: keep the real one across restarts

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    @property
    def root(self) -> Path:
        return self.directory / "root"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def issued(self) -> list[tuple[str | None, str]]:
        """(user, scope) of every /token request answered 200, from the access log."""
        found: list[tuple[str | None, str]] = []
        for line in self.log().splitlines():
            match = re.search(r' (\S+) "GET /token\?(\S*)" 200 ', line)
            if match:
                user = None if match.group(1) == "-" else match.group(1)
                for value in urllib.parse.parse_qs(match.group(2)).get("scope", []):
                    found += [(user, scope) for scope in value.split(" ") if scope]
        return found

    @property
    def expires_in(self) -> int:
        return int(self.options["token_lifetime"])

    @expires_in.setter
    def expires_in(self, value: int) -> None:
        self.options["token_lifetime"] = value
        self.stop()
        self.start()


OLD_SRC = os.environ.get("ORMB_TEST_SERVER_SRC")  # run `serve` (and `gc`) from another source tree
CLIENT_TIMEOUT = 2


def ormb_command(*args: str) -> tuple[list[str], dict[str, str]]:
    """argv and environment for ``python -m ormb ARGS``, from ORMB_TEST_SERVER_SRC when set."""
    return [sys.executable, "-m", "ormb", *args], {**os.environ, **({"PYTHONPATH": OLD_SRC} if OLD_SRC else {})}


class Served:
    """One ``ormb registry serve`` process on a free port."""

    def __init__(self, root: Path, tls: tuple[Path, Path] | None = None, *extra: str) -> None:
        self.root, self.tls, self.port = root, tls, free_port()
        args, env = ormb_command("registry", "serve", "--root", str(root), "--addr", self.host)
        if tls:
            args += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
        if not OLD_SRC:
            args += ["--client-timeout", str(CLIENT_TIMEOUT), "--threads", "16", *extra]
        self.log_path = root.parent / f"serve-{self.port}.log"
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(args, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        time.sleep(0.3)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                timeout: float = 10) -> tuple[int, http.client.HTTPMessage, bytes]:
        conn = http.client.HTTPConnection(self.host, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.headers, response.read()
        finally:
            conn.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.log.close()


class TokenDistribution:
    """CNCF distribution with Bearer auth and its token server, seen as one registry."""

    def __init__(self, registry: Distribution, token_server: TokenServer) -> None:
        self.registry, self.token_server = registry, token_server

    @property
    def host(self) -> str:
        return self.registry.host

    @property
    def port(self) -> int:
        return self.registry.port

    @property
    def issued(self) -> list[tuple[str, str]]:
        return self.token_server.issued

    @property
    def expires_in(self) -> int:
        return self.token_server.expires_in

    @expires_in.setter
    def expires_in(self, value: int) -> None:
        self.token_server.expires_in = value


def start_registry(kind: str, directory: Path, port: int = 0) -> Distribution | EmbeddedRegistry:
    """A registry without auth: CNCF distribution or the embedded one.  The embedded one also serves the
    name ``registry.invalid``, by which test_faults reaches it through a proxy (an open ``ormb registry
    serve`` answers only the host names it serves: DNS rebinding)."""
    if kind == "distribution":
        return Distribution(directory, port=port)
    return EmbeddedRegistry(directory, port=port, public_hosts=("registry.invalid",))
