"""The tiny application every candidate of `server_compare.py` serves (WSGI and ASGI), and the
runners for the servers that have no command of their own (cheroot, waitress)."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

BLOB = os.environ.get("SERVER_COMPARE_BLOB", "/dev/null")
CHUNK = 1 << 20


def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path, method = environ["PATH_INFO"], environ["REQUEST_METHOD"]
    if path == "/up" and method in ("PUT", "POST"):
        hasher = hashlib.sha256()
        stream = environ["wsgi.input"]
        while chunk := stream.read(CHUNK):
            hasher.update(chunk)
        body = hasher.hexdigest().encode()
        start_response("201 Created", [("Content-Length", str(len(body)))])
        return [body]
    if path == "/blob":
        f = open(BLOB, "rb")
        start_response("200 OK", [("Content-Length", str(os.fstat(f.fileno()).st_size)),
                                  ("Content-Type", "application/octet-stream")])
        wrapper = environ.get("wsgi.file_wrapper")
        return wrapper(f, CHUNK) if wrapper else iter(lambda: f.read(CHUNK), b"")
    start_response("200 OK", [("Content-Length", "2"), ("Content-Type", "application/json")])
    return [b"{}"]


async def asgi(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path, method = scope["path"], scope["method"]
    if path == "/up" and method in ("PUT", "POST"):
        hasher = hashlib.sha256()
        more = True
        while more:
            message = await receive()
            hasher.update(message.get("body", b""))
            more = message.get("more_body", False)
        body = hasher.hexdigest().encode()
        await send({"type": "http.response.start", "status": 201, "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        return
    if path == "/blob":
        size = os.path.getsize(BLOB)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(size).encode())]})
        with open(BLOB, "rb") as f:
            while chunk := f.read(CHUNK):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


def run(kind: str, bind: str, cert: str, key: str) -> None:
    host, _, port = bind.rpartition(":")
    if kind == "cheroot":
        from cheroot import wsgi as cheroot_wsgi

        server = cheroot_wsgi.Server((host, int(port)), wsgi, numthreads=16)
        if cert:
            from cheroot.ssl.builtin import BuiltinSSLAdapter

            server.ssl_adapter = BuiltinSSLAdapter(cert, key)
        try:
            server.start()
        except KeyboardInterrupt:
            server.stop()
    else:
        if cert:
            sys.exit("waitress has no TLS")
        import waitress

        waitress.serve(wsgi, host=host, port=int(port), threads=16, _quiet=True)


if __name__ == "__main__":
    run(*sys.argv[1:5])
