"""The name the registry goes by: what ``ormb registry serve`` announces and what the catalog's
Copy button copies.

A client keys its cache and its logins by the registry host as written, and a reference without a
host means ``localhost:5000`` (:data:`ormb.config.DEFAULT_REGISTRY`): the same registry called
``127.0.0.1:5000`` is a second registry to it, with a second copy of each model and a second
login.  So this registry calls itself ``localhost`` whenever ``localhost`` reaches the address it
listens on (a loopback address ``localhost`` resolves to, or a wildcard address), and the catalog
names it

- by a ``--public-host`` name when one is configured: the name the browser used if it is one of
  them (with the port the browser used), else the first (a proxy may pass its own Host);
- else by the host the browser used (the Host header, which :class:`~ormb.server.browser.BrowserGuard`
  has checked against the names served), a loopback one as ``localhost``;
- and when the header is no host name at all (a registry with logins answers any Host), by the
  address the request arrived on, named the same way.  The header's words never reach the page
  unchecked.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from ormb.oci.grammar import is_digest, is_host
from ormb.oci.reference import is_loopback_host
from ormb.server.browser import WILDCARDS, is_loopback_name, split_host
from ormb.server.http import Request


def localhost_reaches(address: str) -> bool:
    """Whether a client connecting to ``localhost`` reaches a socket bound to ``address``."""
    address = address.strip("[]")
    if address in WILDCARDS:
        return True
    try:
        bound = ipaddress.ip_address(address)
        found = socket.getaddrinfo("localhost", None, type=socket.SOCK_STREAM)
    except (ValueError, OSError):
        return False
    return any(ipaddress.ip_address(str(info[4][0]).partition("%")[0]) == bound for info in found)


def join_host(host: str, port: str | int) -> str:
    """``host:port`` (IPv6 addresses in brackets); just ``host`` when ``port`` is empty."""
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}" if port != "" else shown


@dataclass(frozen=True)
class Listening:
    """What ``ormb registry serve`` announces once its socket is bound."""

    url: str  # scheme://host: how this machine reaches the registry
    host: str  # host[:port] as model names should spell it
    bound: str  # the listening address, host:port
    kind: str  # "loopback", "every address", or "" (one address)

    @property
    def client_flag(self) -> str:
        """What ``ormb pull`` needs to reach this URL (see :func:`client_flag`)."""
        scheme, _, host = self.url.partition("://")
        return client_flag(scheme, host)


def client_flag(scheme: str, host: str) -> str:
    """``--tls`` or ``--plain-http`` when the client would not use ``scheme`` for ``host`` by itself
    (it talks plain HTTP to loopback names only: :func:`ormb.oci.reference.is_loopback_host`)."""
    if scheme == "https" and is_loopback_host(host):
        return "--tls"
    if scheme == "http" and not is_loopback_host(host):
        return "--plain-http"
    return ""


@dataclass(frozen=True)
class RegistryNames:
    public_hosts: tuple[tuple[str, str], ...] = ()  # --public-host values as (host, port), lower-case
    localhost: bool = True  # `localhost` reaches the listening address

    @classmethod
    def for_address(cls, addr_host: str, public_hosts: tuple[str, ...] = ()) -> RegistryNames:
        """The names of a registry listening on ``addr_host`` (``--addr``'s host) with ``--public-host``s."""
        return cls(tuple(found for value in public_hosts if (found := split_host(value)) is not None),
                   localhost_reaches(addr_host))

    def named(self, host: str, port: str | int) -> str:
        """How to spell the registry reached at ``host`` (lower-case, no brackets) and ``port``."""
        if self.localhost and (is_loopback_name(host) or host in WILDCARDS):
            return join_host("localhost", port)
        return join_host(host, port)

    def listening(self, address: str, port: int, *, tls: bool) -> Listening:
        host = self.named(address, port)
        kind = "every address" if address in WILDCARDS else "loopback" if is_loopback_name(address) else ""
        return Listening(f"{'https' if tls else 'http'}://{host}", host, join_host(address, port), kind)

    def pull_command(self, request: Request, name: str, reference: str) -> str:
        """The ``ormb pull`` command for ``name`` and a tag or digest, as the catalog shows it."""
        host = self.for_request(request)
        # a public name is what clients elsewhere use (a proxy there may speak TLS while we see HTTP)
        flag = "" if self.public_hosts else client_flag(request.scheme, host)
        ref = f"{host}/{name}@{reference}" if is_digest(reference) else f"{host}/{name}:{reference}"
        return " ".join(("ormb pull", flag, ref)) if flag else f"ormb pull {ref}"

    def for_request(self, request: Request) -> str:
        """The registry host a model name on a page should use (see the module's doc)."""
        header = split_host(request.header("Host"))
        if self.public_hosts:
            if header is not None and any(host == header[0] for host, _ in self.public_hosts):
                return join_host(*header)  # one of its public names, as the browser reached it
            return join_host(*self.public_hosts[0])
        if header is not None and is_host(name := self.named(*header)):
            return name
        address = str(request.environ.get("SERVER_NAME", "")).strip("[]").lower()
        name = self.named(address, str(request.environ.get("SERVER_PORT", "")))
        return name if is_host(name) else "localhost"
