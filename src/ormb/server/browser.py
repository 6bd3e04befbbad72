"""What a web page in someone's browser may make this registry do: Host and Origin checks.

Two attacks, both against a developer's ``localhost:5000`` from a page on another site:

- **DNS rebinding**: ``evil.example`` resolves to 127.0.0.1 after the page loaded, so its scripts
  reach the registry as if same-origin, sending ``Host: evil.example``.  The registry answers only
  the host names it serves (:meth:`BrowserGuard.host_served`), otherwise 421: loopback names and
  addresses (``localhost``, ``*.localhost``, 127.0.0.0/8, ``::1``), the ``--addr`` host (for a
  wildcard address: the machine's names and any IP address: an address cannot be rebound), and
  every ``--public-host`` name; any port.  This holds whenever anonymous users may do anything (the
  open registry, ``--htpasswd --anonymous-pull``, a policy with ``anonymous`` rules: a rebinding page
  acts as anonymous), and for any registry given ``--public-host``.  A registry whose every action
  needs a login answers any Host: a rebinding page has no credentials for it.
- **Cross-site requests** (CSRF): a form or ``fetch`` from another origin, which a browser sends
  with the Basic credentials it remembers.  A request that would change state (any method but
  GET, HEAD, OPTIONS) with an ``Origin`` that is not this registry (``null`` included), or that
  the browser marks ``Sec-Fetch-Site: cross-site``/``same-site``, is refused with 403 before its
  credentials are read.  Command-line clients send no ``Origin``; the registry's own pages send
  its own.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.parse
from dataclasses import dataclass, field

from ormb.server.http import Request, SpecError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
WILDCARDS = ("", "0.0.0.0", "::")


def split_host(value: str) -> tuple[str, str] | None:
    """``(host, port)`` of a Host header or authority, lower-case, without brackets or a final dot
    (port '' when absent); None when it is not a host name or address."""
    value = value.strip().lower()
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    else:
        host, _, port = value.partition(":") if value.count(":") == 1 else (value, "", "")
        host = host.rstrip(".")
        if not host or len(host) > 253 or not all(c.isascii() and (c.isalnum() or c in "-._") for c in host):
            return None
    if port and not (port.isascii() and port.isdigit() and len(port) <= 5):
        return None
    return host, port


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def is_loopback_name(host: str) -> bool:
    ip = _ip(host)
    if ip is not None:
        return ip.is_loopback
    return host == "localhost" or host.endswith(".localhost")  # RFC 6761: browsers never ask DNS for these


@dataclass(frozen=True)
class BrowserGuard:
    names: frozenset[str] = frozenset()  # host names and addresses served besides the loopback ones
    any_address: bool = False  # bound to a wildcard address: any IP-address Host is served
    check_host: bool = True  # False: every Host is answered (logins for everything, no --public-host)
    _seen: dict[str, tuple[tuple[str, str] | None, bool]] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def for_address(cls, addr_host: str, public_hosts: tuple[str, ...] = (), *, open_registry: bool = True) -> BrowserGuard:
        """The guard for a registry listening on ``addr_host`` and reached also as ``public_hosts``;
        ``open_registry``: anonymous users may do something (:attr:`AccessControl.anonymous_may_act`)."""
        names = {h for value in public_hosts if (found := split_host(value)) for h in (found[0],)}
        wildcard = addr_host.strip("[]") in WILDCARDS
        if wildcard:
            names |= {n.lower().rstrip(".") for n in (socket.gethostname(), socket.getfqdn()) if n}
        elif (found := split_host(f"[{addr_host}]" if ":" in addr_host else addr_host)) is not None:
            names.add(found[0])
        return cls(frozenset(names), wildcard, open_registry or bool(public_hosts))

    def host_served(self, host: str) -> bool:
        if is_loopback_name(host) or host in self.names:
            return True
        return self.any_address and _ip(host) is not None

    def _verdict(self, host_header: str) -> tuple[tuple[str, str] | None, bool]:
        """(split Host, served?), remembered: parsing addresses costs more than the rest of a HEAD."""
        known = self._seen.get(host_header)
        if known is None:
            own = split_host(host_header) if host_header else ("", "")
            known = own, own is not None and (not host_header or self.host_served(own[0]))
            if len(self._seen) >= 256:  # Host values are the client's choice: stay small
                self._seen.clear()
            self._seen[host_header] = known
        return known

    def check(self, request: Request) -> None:
        """Raise 421 for a Host this registry does not serve, 403 for a cross-site request that
        would change state."""
        host_header = request.header("Host")
        own, served = self._verdict(host_header)
        if self.check_host and not served:
            shown = host_header[:100].encode("ascii", "replace").decode()
            raise SpecError(421, "DENIED", f"this registry does not serve the host name {shown!r} "
                            "(if clients reach it by that name, start it with --public-host NAME)")
        if request.method in SAFE_METHODS:
            return
        if request.header("Sec-Fetch-Site").strip().lower() in ("cross-site", "same-site"):
            raise _cross_site("the browser marks the request cross-site")
        origin = request.header("Origin").strip()
        if origin and not self._same_origin(origin, own or ("", "")):
            raise _cross_site(f"Origin {origin[:100]!r} is not this registry")

    def _same_origin(self, origin: str, own: tuple[str, str]) -> bool:
        parts = urllib.parse.urlsplit(origin)
        if parts.scheme not in ("http", "https") or parts.path or parts.query or parts.username:
            return False  # 'null' (a sandboxed frame, a file, a redirect chain) and anything odd
        found = split_host(parts.netloc)
        if found is None:
            return False
        host, port = found
        own_host, own_port = own
        default = "443" if parts.scheme == "https" else "80"
        if (port or default) != (own_port or default):  # no port in Host: the default one, as the client saw it
            return False
        return host == own_host or self.host_served(host)  # this server under another of its names


def _cross_site(why: str) -> SpecError:
    return SpecError(403, "DENIED", f"a cross-site request may not change this registry: {why}")
