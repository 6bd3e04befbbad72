"""A hostile registry for the tests: enough of the distribution API for push, pull, copy and tags,
served from several origins at once, with answers a test can bend.

* ``home``: the registry the client is pointed at; it wants credentials (Basic, or a Bearer token
  from ``realm``).
* ``elsewhere``: the same host on another port; ``other_host``: 127.0.0.2 on home's port.  Both
  serve the same storage without asking for credentials, so a client sent there (an upload
  ``Location``, a tags ``Link``, a blob redirect) carries on, and whatever it sends is recorded.
* ``realm``: the token service (Bearer only).

Every request on every origin is recorded in ``seen`` with its ``Authorization`` header.  A
test bends the registry with ``upload_origin``, ``blob_origin``, ``blobs_chunked``, ``tags`` (pages and
links) or ``intercept`` (any answer, byte for byte); ``blobs`` and ``manifests`` may be filled directly,
with content no honest registry would accept.  ``bend`` rewrites any answer after it was made (a header
made odd, a status changed).  A safety cap answers 400 after ``MAX_REQUESTS`` requests, so a client that
loops ends instead of hanging the suite.  ``seen`` also keeps each request's body, so a test can look for
a secret sent in a form (an identity token).
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import ssl
import threading
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

USER, PASSWORD = "alice", "alice-secret-pw"
TOKEN = "hostile-test-token-for-alice"
IDENTITY_TOKEN = "hostile-identity-token-of-alice"  # a refresh token, as 'docker login' stores for OAuth registries
MAX_REQUESTS = 2000


@dataclass(frozen=True)
class Seen:
    origin: str
    method: str
    path: str
    authorization: str | None
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()

    def carries(self, secret: str) -> bool:
        """True when ``secret`` travels in this request: a header or the body."""
        return secret.encode() in self.body or any(secret in value for _, value in self.headers)


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    raw: bytes | None = None  # sent byte for byte instead (status line, headers, body), then the connection closes
    informational: tuple[int, ...] = ()  # 1xx answers sent first (103 Early Hints), each with a Link header
    chunked: bool = False  # Transfer-Encoding: chunked, no Content-Length (the size is known only at the end)


def raw_answer(status: int, headers: dict[str, str], body: bytes, *, length: int | None = None) -> Answer:
    """An answer whose ``Content-Length`` may lie (``length``): the connection closes after ``body``."""
    head = f"HTTP/1.1 {status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head += f"Content-Length: {len(body) if length is None else length}\r\nConnection: close\r\n\r\n"
    return Answer(status, raw=head.encode("latin-1") + body)


Intercept = Callable[["Origin", str, str, dict[str, str]], "Answer | None"]
Bend = Callable[["Origin", str, str, Answer], Answer]


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up early (it read what it needed) is no news here


class Origin:
    """One server (scheme, host, port) of the hostile registry."""

    def __init__(self, name: str, registry: HostileRegistry, host: str, port: int,
                 tls: tuple[Path, Path] | None = None) -> None:
        self.name, self.registry, self.host = name, registry, host
        origin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                answer = registry.handle(origin, self.command, self.path, dict(self.headers.items()), body)
                if answer.raw is not None:
                    self.wfile.write(answer.raw)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                for status in answer.informational:
                    self.wfile.write(f"HTTP/1.1 {status} Early Hints\r\nLink: </v2/>; rel=preload\r\n\r\n".encode())
                self.send_response(answer.status)
                for key, value in answer.headers.items():
                    self.send_header(key, value)
                if answer.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if not answer.chunked:
                    self.wfile.write(answer.body)
                    return
                for start in range(0, len(answer.body), 1 << 16):
                    piece = answer.body[start:start + (1 << 16)]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _serve

        self.httpd = _QuietServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.scheme = "https" if tls else "http"
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class HostileRegistry:
    def __init__(self, *, auth: str = "basic", tls: tuple[Path, Path] | None = None,
                 realm_scheme: str = "http") -> None:
        self.auth = auth
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, tuple[bytes, str]] = {}  # by digest and by "name:tag"
        self.uploads: dict[str, bytearray] = {}
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self.upload_origin = "home"  # where POST .../blobs/uploads/ sends the client
        self.blob_origin = "home"  # where a blob GET at home is redirected (307)
        self.blobs_chunked = False  # blobs sent with Transfer-Encoding: chunked, no Content-Length
        self.tags: Callable[[Origin, dict[str, list[str]]], tuple[list[str], str | None]] | None = None
        self.intercept: Intercept | None = None
        self.bend: Bend | None = None  # (origin, method, path, answer) -> the answer to send instead
        self.home = Origin("home", self, "127.0.0.1", 0, tls)
        self.elsewhere = Origin("elsewhere", self, "127.0.0.1", 0, tls)
        self.other_host = Origin("other-host", self, "127.0.0.2", self.home.port, tls)
        self.realm = Origin("realm", self, "127.0.0.1", 0, tls if realm_scheme == "https" else None)
        self.origins = {o.name: o for o in (self.home, self.elsewhere, self.other_host, self.realm)}

    @property
    def host(self) -> str:
        return self.home.address

    def stop(self) -> None:
        for origin in self.origins.values():
            origin.stop()

    def credentials_seen(self, *origins: str) -> list[Seen]:
        """Requests that carried an Authorization header, the password or the token to any of ``origins``."""
        return [s for s in self.seen if s.origin in origins and (
            s.authorization or s.carries(PASSWORD) or s.carries(TOKEN) or s.carries(IDENTITY_TOKEN))]

    def requests_to(self, origin: str) -> list[Seen]:
        return [s for s in self.seen if s.origin == origin]

    # -- serving ----------------------------------------------------------------------------
    def handle(self, origin: Origin, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        with self.lock:
            self.seen.append(Seen(origin.name, method, target, headers.get("Authorization"), body,
                                  tuple(headers.items())))
            if len(self.seen) > MAX_REQUESTS:
                return Answer(400, {}, b'{"errors":[{"code":"DENIED","message":"too many requests"}]}')
        answer = self._answer(origin, method, target, headers, body)
        return self.bend(origin, method, target, answer) if self.bend is not None else answer

    def _answer(self, origin: Origin, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        if self.intercept is not None:
            answer = self.intercept(origin, method, target, headers)
            if answer is not None:
                return answer
        parts = urllib.parse.urlsplit(target)
        path, query = parts.path, urllib.parse.parse_qs(parts.query)
        if origin.name == "realm":
            return self._token(method, headers, body)
        if origin.name == "home" and not self._authorized(headers):
            return self._challenge()
        return self._route(origin, method, path, query, headers, body)

    def _authorized(self, headers: dict[str, str]) -> bool:
        given = headers.get("Authorization", "")
        if self.auth == "basic":
            return given == "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        return given == f"Bearer {TOKEN}"

    def _challenge(self) -> Answer:
        if self.auth == "basic":
            header = 'Basic realm="hostile"'
        else:
            header = f'Bearer realm="{self.realm.url}/token",service="hostile"'
        return Answer(401, {"WWW-Authenticate": header, "Content-Type": "application/json"},
                      b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}')

    def _token(self, method: str, headers: dict[str, str], body: bytes) -> Answer:
        if method == "POST":  # OAuth2 refresh-token grant: the identity token in the form
            form = urllib.parse.parse_qs(body.decode())
            if form.get("refresh_token") != [IDENTITY_TOKEN]:
                return Answer(401, {}, b'{"details":"bad refresh token"}')
            return Answer(200, {"Content-Type": "application/json"}, json.dumps({"access_token": TOKEN}).encode())
        if headers.get("Authorization") != "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode():
            return Answer(401, {}, b'{"details":"bad credentials"}')
        return Answer(200, {"Content-Type": "application/json"}, json.dumps({"token": TOKEN}).encode())

    def _route(self, origin: Origin, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str],
               body: bytes) -> Answer:
        if path == "/v2/":
            return Answer(200, {"Docker-Distribution-API-Version": "registry/2.0"})
        if path.startswith("/upload/"):
            return self._upload(origin, method, path.rsplit("/", 1)[1], query, body)
        name, _, rest = path[len("/v2/"):].partition("/blobs/")
        if rest:
            if rest == "uploads/":
                upload = uuid.uuid4().hex
                self.uploads[upload] = bytearray()
                where = self.origins[self.upload_origin]
                location = f"/upload/{upload}" if where is origin else f"{where.url}/upload/{upload}"
                return Answer(202, {"Location": location, "Range": "0-0"})
            return self._blob(origin, method, name, rest)
        name, _, reference = path[len("/v2/"):].partition("/manifests/")
        if reference:
            return self._manifest(method, name, reference, headers, body)
        if path.endswith("/tags/list"):
            name = path[len("/v2/"):-len("/tags/list")]
            return self._tag_list(origin, name, query)
        return Answer(404, {}, b'{"errors":[{"code":"NOT_FOUND","message":"no route"}]}')

    def _upload(self, origin: Origin, method: str, upload: str, query: dict[str, list[str]], body: bytes) -> Answer:
        buffer = self.uploads.get(upload)
        if buffer is None:
            return Answer(404, {}, b'{"errors":[{"code":"BLOB_UPLOAD_UNKNOWN"}]}')
        buffer += body
        if method == "PATCH":
            return Answer(202, {"Location": f"/upload/{upload}", "Range": f"0-{len(buffer) - 1}"})
        digest = query.get("digest", [""])[0]
        if "sha256:" + hashlib.sha256(buffer).hexdigest() != digest:
            return Answer(400, {}, b'{"errors":[{"code":"DIGEST_INVALID"}]}')
        self.blobs[digest] = bytes(buffer)
        return Answer(201, {"Location": f"/v2/x/blobs/{digest}", "Docker-Content-Digest": digest})

    def _blob(self, origin: Origin, method: str, name: str, digest: str) -> Answer:
        data = self.blobs.get(digest)
        if data is None:
            return Answer(404, {}, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
        if origin.name == "home" and self.blob_origin != "home" and method == "GET":
            return Answer(307, {"Location": f"{self.origins[self.blob_origin].url}/v2/{name}/blobs/{digest}"})
        return Answer(200, {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest}, data,
                      chunked=self.blobs_chunked)

    def _manifest(self, method: str, name: str, reference: str, headers: dict[str, str], body: bytes) -> Answer:
        if method == "PUT":
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            media_type = headers.get("Content-Type", "")
            self.manifests[digest] = self.manifests[f"{name}:{reference}"] = (body, media_type)
            return Answer(201, {"Docker-Content-Digest": digest, "Location": f"/v2/{name}/manifests/{digest}"})
        found = self.manifests.get(reference) or self.manifests.get(f"{name}:{reference}")
        if found is None:
            return Answer(404, {}, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}')
        data, media_type = found
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        return Answer(200, {"Content-Type": media_type, "Docker-Content-Digest": digest}, data)

    def _tag_list(self, origin: Origin, name: str, query: dict[str, list[str]]) -> Answer:
        if self.tags is not None:
            tags, link = self.tags(origin, query)
        else:
            prefix = f"{name}:"
            tags, link = sorted(k[len(prefix):] for k in self.manifests if k.startswith(prefix)), None
        headers = {"Content-Type": "application/json"}
        if link:
            headers["Link"] = f'<{link}>; rel="next"'
        return Answer(200, headers, json.dumps({"name": name, "tags": tags}).encode())
