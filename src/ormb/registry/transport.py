"""Options and the HTTP layer under the registry client (urllib3, built on http.client).

Retries with exponential backoff on connection errors, 5xx and 429 (honouring
``Retry-After``); TLS verified by default, with ``insecure`` and ``ca_file``; plain HTTP
for loopback hosts as Docker does; ``HTTPS_PROXY``/``NO_PROXY`` honoured.
"""

from __future__ import annotations

import http.client
import os
import selectors
import socket
import ssl
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias

import urllib3
import urllib3.connection
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import LocationValueError, SSLError

from ormb._version import __version__
from ormb.errors import IntegrityError, NetworkError, OrmbError, RegistryError
from ormb.oci.grammar import is_decimal
from ormb.oci.reference import is_loopback_host
from ormb.registry.options import TransportOptions as TransportOptions  # where it lived before

USER_AGENT = f"ormb/{__version__}"
Body: TypeAlias = "bytes | Iterable[bytes | FileRegion] | None"
BodyFactory: TypeAlias = "Callable[[], Body]"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


def scheme_for(host: str, options: TransportOptions) -> str:
    if options.plain_http is not None:
        return "http" if options.plain_http else "https"
    return "http" if is_loopback_host(host) else "https"


def _ssl_context(options: TransportOptions) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=options.ca_file)
    if options.insecure:  # the user asked for it: no warning per request
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


MAX_INFORMATIONAL = 8  # 1xx answers skipped before a final one (more: the last is taken as final, an error)


class _FinalResponse(http.client.HTTPResponse):
    """http.client skips ``100 Continue`` only, and would take ``103 Early Hints`` (which a CDN in front of a
    registry may send) for the answer, leaving the real one in the socket for the next request to read.
    Every 1xx but ``101`` is reported to :meth:`begin` as a 100, whose headers it then skips."""

    _informational = 0

    def _read_status(self) -> tuple[str, int, str]:
        version, status, reason = super()._read_status()  # type: ignore[misc]
        if 102 <= status < 200 and self._informational < MAX_INFORMATIONAL:
            self._informational += 1
            return version, http.client.CONTINUE, reason
        return version, status, reason


SENDFILE_PIECE = 8 << 20  # bytes per sendfile(2) call: the progress hook runs between pieces
TLS_PIECE = 1 << 20  # bytes read and encrypted at a time when a FileRegion goes over TLS


@dataclass(frozen=True)
class FileRegion:
    """``count`` bytes of the open regular file ``fd`` from ``offset``, as one piece of a request body.

    On plain HTTP the connection hands it to the kernel with ``sendfile(2)``: the bytes go from the page
    cache to the socket without being copied into Python (a blob's digest is known, so nothing needs to
    read them).  Over TLS they are read with ``pread`` and sent in ``TLS_PIECE`` blocks.  The file's own
    position is not moved.  ``sent`` is told of every piece that went (progress).  A file that ends
    before ``count`` bytes raises :class:`~ormb.errors.IntegrityError` (the local content ended early).
    """

    fd: int
    offset: int
    count: int
    sent: Callable[[int], None] | None = None

    def __len__(self) -> int:  # urllib3 skips empty body pieces: a region is as long as its count
        return self.count


def _region_ended(region: FileRegion, sent: int) -> IntegrityError:
    return IntegrityError(f"the local content ended {region.count - sent} bytes early")


def _sendfile(sock: socket.socket, region: FileRegion) -> None:
    """Send ``region`` with sendfile(2), waiting (up to the socket's timeout) when the socket's buffer is full."""
    offset, left = region.offset, region.count
    timeout = sock.gettimeout()
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_WRITE)
        while left:
            try:
                n = os.sendfile(sock.fileno(), region.fd, offset, min(left, SENDFILE_PIECE))
            except BlockingIOError:
                if not selector.select(timeout):
                    raise TimeoutError("timed out sending a request body") from None
                continue
            if n == 0:
                raise _region_ended(region, offset - region.offset)
            offset += n
            left -= n
            if region.sent is not None:
                region.sent(n)


def _send_read(sock: socket.socket, region: FileRegion) -> None:
    """Send ``region`` through Python (TLS): pread and sendall, one ``TLS_PIECE`` at a time."""
    offset, left = region.offset, region.count
    while left:
        data = os.pread(region.fd, min(left, TLS_PIECE), offset)
        if not data:
            raise _region_ended(region, offset - region.offset)
        sock.sendall(data)
        offset += len(data)
        left -= len(data)
        if region.sent is not None:
            region.sent(len(data))


class _Connection(urllib3.connection.HTTPConnection):
    response_class = _FinalResponse

    def send(self, data: Any) -> None:
        if isinstance(data, FileRegion):  # a piece of a body: see FileRegion
            assert self.sock is not None  # the headers went first
            _sendfile(self.sock, data)
            return
        super().send(data)


class _TLSConnection(urllib3.connection.HTTPSConnection):
    response_class = _FinalResponse

    def send(self, data: Any) -> None:
        if isinstance(data, FileRegion):  # sendfile(2) cannot encrypt: read and send
            assert self.sock is not None
            _send_read(self.sock, data)
            return
        super().send(data)


class _Pool(urllib3.HTTPConnectionPool):
    ConnectionCls = _Connection


class _TLSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


class Transport:
    """Sends requests for one registry host; owns its connection pool."""

    def __init__(self, host: str, options: TransportOptions) -> None:
        self.host = host
        self.options = options
        self.base_url = f"{scheme_for(host, options)}://{host}"
        timeout = urllib3.Timeout(connect=options.connect_timeout, read=options.read_timeout)
        pool_kw: dict[str, Any] = {"timeout": timeout, "retries": False, "maxsize": max(options.concurrency, 4),
                   "blocksize": 1 << 20}
        if self.base_url.startswith("https"):
            pool_kw["ssl_context"] = _ssl_context(options)
        proxy = self._proxy()
        self._answered = False  # has this host answered once? Until it has, "connection refused" is final
        self.pool: urllib3.PoolManager = (
            urllib3.ProxyManager(proxy, **pool_kw) if proxy else urllib3.PoolManager(**pool_kw)
        )
        self.pool.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}

    def _proxy(self) -> str | None:
        proxies = urllib.request.getproxies_environment()
        scheme = self.base_url.split(":", 1)[0]
        proxy = proxies.get(scheme)
        if not proxy or urllib.request.proxy_bypass_environment(  # type: ignore[attr-defined]
            self.host.rsplit(":", 1)[0]):
            return None
        return proxy

    def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: BodyFactory | None = None,
    ) -> urllib3.BaseHTTPResponse:
        """Send, retrying transient failures; the response body is not read (stream it, then release).

        Redirects are not followed here: the registry client follows them one hop at a time, so that
        it decides for each hop whether credentials go there (client.Registry.request).
        """
        headers = {"User-Agent": USER_AGENT, **headers}
        attempt = 0
        while True:
            try:
                response = self.pool.request(  # a FileRegion piece reaches our connections' send() as it is
                    method, url, headers=headers, body=body() if body else None,  # type: ignore[arg-type]
                    preload_content=False,
                    redirect=False, retries=False,
                )
            except OrmbError:  # the body factory's own (local content that ended early, a stream sent twice)
                raise
            except LocationValueError:  # a URL urllib3 cannot parse (the client checks every URL it is handed)
                raise RegistryError(f"cannot send a request to {url[:200]!r}: not a valid URL") from None
            except ValueError as exc:  # http.client refusing a header value or a method
                raise RegistryError(f"cannot send a request to {self.host}: {str(exc)[:200]}") from None
            except SSLError as exc:
                raise NetworkError(_tls_message(self.host, exc), _tls_hint(exc)) from None
            except Urllib3Error as exc:
                reason = getattr(exc, "reason", None)
                if isinstance(reason, SSLError):
                    raise NetworkError(_tls_message(self.host, reason), _tls_hint(reason)) from None
                # A registry that has never answered and refuses the connection is not running: say so now,
                # instead of after seconds of silent retries.  Once it has answered, a refusal is a restart
                # under way, and worth the retries.
                if attempt >= self.options.retries or (not self._answered and _reason(exc) == "connection refused"):
                    raise NetworkError(f"cannot reach {self.host}: {_reason(exc)}") from None
                self._sleep(attempt, None)
                attempt += 1
                continue
            self._answered = True
            if response.status in RETRY_STATUSES and attempt < self.options.retries:
                retry_after = response.headers.get("Retry-After")
                response.drain_conn()
                response.release_conn()
                self._sleep(attempt, retry_after)
                attempt += 1
                continue
            return response

    def _sleep(self, attempt: int, retry_after: str | None) -> None:
        delay = self.options.backoff * (2**attempt)
        if retry_after and is_decimal(retry_after):
            delay = min(float(retry_after), 60.0)
        time.sleep(delay)


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    text = str(reason)
    if "Connection refused" in text:
        return "connection refused"
    if "Name or service not known" in text or "nodename nor servname" in text or "Failed to resolve" in text:
        return "unknown host name"
    if "timed out" in text.lower():
        return "timed out"
    if "Connection aborted" in text or "RemoteDisconnected" in text or "reset by peer" in text:
        return "the connection was closed by the registry"
    return text.split(": ", 1)[-1][:200]


def _tls_message(host: str, exc: BaseException) -> str:
    text = str(exc)
    if "doesn't match" in text or "Hostname mismatch" in text or "IP address mismatch" in text:
        return f"TLS certificate of {host} is for another name"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return f"TLS certificate of {host} is not trusted"
    if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text:
        return f"{host} does not speak TLS"
    return f"TLS handshake with {host} failed: {text[:200]}"


def _tls_hint(exc: BaseException) -> str:
    if "WRONG_VERSION_NUMBER" in str(exc) or "record layer failure" in str(exc):
        return "use --plain-http for a registry without TLS"
    return "pass the registry's CA with --ca-file FILE, or skip verification with --insecure"
