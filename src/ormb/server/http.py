"""Requests, responses and the spec's errors, over WSGI: the only module that reads ``environ``.

The HTTP server (gunicorn) has already parsed the framing (chunked bodies, Content-Length) by
the time a request gets here; this module checks what the application relies on and turns
every way a body can fail (a client that stops sending, a timeout, a malformed chunk) into
:class:`ClientGone`, so no handler sees a server's exception.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from ormb.oci.grammar import IO_CHUNK, is_decimal

DRAIN_LIMIT = 16 << 20  # a refused body up to this size is read before the answer
StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 206: "Partial Content",
           303: "See Other", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 413: "Payload Too Large", 416: "Range Not Satisfiable",
           421: "Misdirected Request", 429: "Too Many Requests", 500: "Internal Server Error",
           503: "Service Unavailable", 507: "Insufficient Storage"}


class SpecError(Exception):
    """An error the distribution spec defines: HTTP status, code, message (and extra headers)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


class ClientGone(Exception):
    """The request body ended early, broke its framing, or stalled past the read timeout."""


@dataclass
class Response:
    status: int
    body: bytes | Iterable[bytes] = b""
    headers: dict[str, str] = field(default_factory=dict)
    file: BinaryIO | None = None  # sent with the server's zero-copy path (sendfile)
    file_range: tuple[int, int] = (0, 0)  # (offset, count) of ``file``

    @classmethod
    def json(cls, status: int, data: Any, headers: dict[str, str] | None = None) -> Response:
        return cls(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})

    @classmethod
    def error(cls, err: SpecError) -> Response:
        body = {"errors": [{"code": err.code, "message": err.message, "detail": None}]}
        return cls.json(err.status, body, err.headers)


class Request:
    """One request: method, path, query, headers and a streamed body."""

    def __init__(self, environ: dict[str, Any]) -> None:
        self.environ = environ
        self.method: str = environ.get("REQUEST_METHOD", "GET").upper()
        self.path: str = _path(environ)
        raw_query = environ.get("QUERY_STRING", "")
        try:
            pairs = urllib.parse.parse_qsl(raw_query, keep_blank_values=True, strict_parsing=False,
                                           max_num_fields=100)
        except ValueError:
            raise SpecError(400, "UNSUPPORTED", "the query string is malformed or too long") from None
        self.query: dict[str, str] = {}
        self.query_lists: dict[str, list[str]] = {}
        for key, value in pairs:
            self.query[key] = value
            self.query_lists.setdefault(key, []).append(value)
        self.user: str | None = None  # set by authorisation; the access log shows it
        self.body_read = 0

    def header(self, name: str, default: str = "") -> str:
        key = name.upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            return str(self.environ.get(key) or default)
        return str(self.environ.get("HTTP_" + key, default))

    @property
    def scheme(self) -> str:
        return str(self.environ.get("wsgi.url_scheme", "http"))

    @property
    def client(self) -> str:
        """The client's address (the peer of the connection)."""
        return str(self.environ.get("REMOTE_ADDR") or "")

    @property
    def host(self) -> str:
        host = self.header("Host")
        if host:
            return host
        return f"{self.environ.get('SERVER_NAME', 'localhost')}:{self.environ.get('SERVER_PORT', '80')}"

    def content_length(self) -> int | None:
        """The announced length; None for a chunked (or absent) one.  Anything but ASCII digits is a 400."""
        value = self.environ.get("CONTENT_LENGTH")
        if value in (None, ""):
            return None
        if not is_decimal(value):
            raise SpecError(400, "SIZE_INVALID", "Content-Length is not a number")
        return int(value)

    def body(self, limit: int | None = None) -> Iterator[bytes]:
        """The body in pieces of at most 1 MiB; raises :class:`ClientGone` if it ends early or breaks,
        :class:`SpecError` 413 past ``limit`` bytes."""
        stream = self.environ["wsgi.input"]
        expected = self.content_length()
        chunked = "chunked" in self.header("Transfer-Encoding").lower()
        if expected is None and not chunked:
            return
        remaining = expected if expected is not None else None
        while remaining is None or remaining > 0:
            want = IO_CHUNK if remaining is None else min(IO_CHUNK, remaining)
            try:
                chunk = stream.read(want)
            except Exception as exc:  # the server's framing errors, timeouts (OSError), resets
                raise ClientGone(f"the request body broke off: {type(exc).__name__}") from None
            if not chunk:
                if remaining is not None:
                    raise ClientGone(f"the request body ended {remaining} bytes early")
                return
            self.body_read += len(chunk)
            if limit is not None and self.body_read > limit:
                raise SpecError(413, "SIZE_INVALID", f"the body is larger than {limit} bytes")
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk

    def read_all(self, limit: int) -> bytes:
        length = self.content_length()
        if length is not None and length > limit:
            if length <= DRAIN_LIMIT:  # read it, so the client (still sending) gets the answer
                for _ in self.body():
                    pass
            raise SpecError(413, "SIZE_INVALID", f"the body is larger than {limit} bytes")
        return b"".join(self.body(limit))


def _path(environ: dict[str, Any]) -> str:
    """PATH_INFO as the client sent it: WSGI hands it over decoded as latin-1."""
    raw = environ.get("PATH_INFO", "/") or "/"
    try:
        return str(raw.encode("latin-1").decode("utf-8"))
    except (UnicodeEncodeError, UnicodeDecodeError):
        return str(raw)


def send(response: Response, request: Request, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Hand ``response`` to the server; files go through ``wsgi.file_wrapper`` (gunicorn: sendfile)."""
    headers = {"Docker-Distribution-API-Version": "registry/2.0", **response.headers}
    if response.file is not None:
        offset, count = response.file_range
        headers["Content-Length"] = str(count)
    elif isinstance(response.body, bytes):
        headers.setdefault("Content-Length", str(len(response.body)))
    start_response(f"{response.status} {REASONS.get(response.status, 'Unknown')}", list(headers.items()))
    if request.method == "HEAD":
        if response.file is not None:
            response.file.close()
        return [b""]
    if response.file is not None:
        response.file.seek(offset)
        wrapper = environ.get("wsgi.file_wrapper")
        if wrapper is not None and str(environ.get("SERVER_SOFTWARE", "")).startswith("gunicorn"):
            # gunicorn sends Content-Length bytes from the file's position with sendfile()
            return wrapper(response.file, IO_CHUNK)  # type: ignore[no-any-return]
        return _read_range(response.file, count)
    return [response.body] if isinstance(response.body, bytes) else response.body


def _read_range(file: BinaryIO, count: int) -> Iterator[bytes]:
    with file:
        while count > 0:
            chunk = file.read(min(IO_CHUNK, count))
            if not chunk:
                return
            count -= len(chunk)
            yield chunk
