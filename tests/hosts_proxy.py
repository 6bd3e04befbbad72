"""An HTTP CONNECT proxy that maps host names to ports on 127.0.0.1: how the README test gives
``registry.example.com`` a registry without touching /etc/hosts or DNS.

ormb honours ``HTTPS_PROXY`` as any client does: for ``https://registry.example.com/...`` it asks
the proxy to ``CONNECT registry.example.com:443`` and then speaks TLS, end to end, with whatever
answers; the proxy only carries bytes.  So the client runs its production path (HTTPS on the default
port, certificate verified for the name ``registry.example.com`` against ``SSL_CERT_FILE``, token
realms and redirects by host name), and the name reaches the server the test started.  A name the
proxy does not map, and any plain-HTTP request, gets ``502``: a command that would leave the machine
fails loudly instead.
"""

from __future__ import annotations

import select
import socket
import socketserver
import threading
from collections.abc import Mapping


class HostsProxy:
    def __init__(self, hosts: Mapping[str, int]) -> None:
        self.hosts = {name.lower(): port for name, port in hosts.items()}  # "name:443" -> port on 127.0.0.1
        self.refused: list[str] = []
        proxy = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                request = self.rfile.readline(8192).decode("latin-1").split()
                while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                    pass
                target = request[1].lower() if len(request) == 3 and request[0] == "CONNECT" else None
                port = proxy.hosts.get(target) if target else None
                if port is None:
                    proxy.refused.append(" ".join(request))
                    self.wfile.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                    return
                with socket.create_connection(("127.0.0.1", port)) as upstream:
                    self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    self.wfile.flush()
                    _pump(self.connection, upstream)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _pump(a: socket.socket, b: socket.socket) -> None:
    sockets = [a, b]
    while True:
        readable, _, _ = select.select(sockets, [], [], 60)
        if not readable:
            return
        for sock in readable:
            data = sock.recv(1 << 16)
            if not data:
                return
            (b if sock is a else a).sendall(data)
