"""The registry server: storage + access control + routes, started from the CLI or from Python.

>>> server = RegistryServer(Path("/tmp/registry")).start()   # a background thread
>>> server.host                                                # '127.0.0.1:5000'
>>> server.stop()
"""

from __future__ import annotations

import http.server
import ssl
import threading
from pathlib import Path

from ormb.errors import StorageError
from ormb.server.access import AccessControl, load_htpasswd, load_policy
from ormb.server.routes import RegistryConfig, RegistryHandler
from ormb.server.storage import Storage


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    tls = False


def parse_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise StorageError(f"invalid address {addr!r}", "use HOST:PORT, e.g. 127.0.0.1:5000")
    return host.strip("[]") or "127.0.0.1", int(port)


class RegistryServer:
    """``ormb registry serve`` as an object."""

    def __init__(
        self,
        root: Path,
        addr: str = "127.0.0.1:5000",
        *,
        htpasswd: Path | None = None,
        policy: Path | None = None,
        anonymous_pull: bool = False,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        auth_scheme: str = "bearer",
        ui: bool = True,
    ) -> None:
        self.storage = Storage(root)
        access = AccessControl(
            users=load_htpasswd(htpasswd) if htpasswd else None,
            rules=load_policy(policy) if policy else None,
            anonymous_pull=anonymous_pull,
            secret=self.storage.secret,
        )
        self.config = RegistryConfig(self.storage, access, auth_scheme=auth_scheme)
        if ui:
            from ormb.server.catalog import serve_ui

            self.config.ui = serve_ui
        handler = type("Handler", (RegistryHandler,), {"config": self.config})
        host, port = parse_addr(addr)
        try:
            self.httpd = _Server((host, port), handler)
        except OSError as exc:
            raise StorageError(f"cannot listen on {addr}: {exc.strerror}", "choose another --addr") from None
        if tls_cert and tls_key:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(tls_cert, tls_key)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
            self.httpd.tls = True
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"{host!s}:{port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.httpd.tls else 'http'}://{self.host}"

    def start(self) -> RegistryServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="ormb-registry", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread:
            self._thread.join(5)
