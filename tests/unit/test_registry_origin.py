"""The origin ormb decides for a URL is the host and port urllib3 connects to, whatever the URL.

Credentials go only to the registry's own origin (docs/security.md, "Credentials stay home").
That promise is only as good as the parser that decides the origin: when ormb read a URL with
``urllib.parse`` and urllib3 connected with its own parser, ``http://127.0.0.1:1\\@registry/``
was "home" to ormb and ``127.0.0.1:1`` to the socket (review finding F1).  The generators below
build URLs from the pieces parsers disagree on (backslashes, ``@``, userinfo, brackets,
percent-encoding, control characters, odd ports) and check that ormb either refuses the URL
or names exactly the (scheme, host, port) urllib3 opens a connection to.
"""

from __future__ import annotations

import urllib3
from hypothesis import example, given
from hypothesis import strategies as st

from ormb.errors import RegistryError
from ormb.registry.client import Origin, Registry, origin_of

HOME = "127.0.0.1:5000"
_POOLS = urllib3.PoolManager()

schemes = st.sampled_from(["http", "https", "HTTP", "hTtPs", "ftp", "file", ""])
hosts = st.sampled_from([
    "127.0.0.1", "127.0.0.2", "localhost", "Registry.Example", "[::1]", "[::1", "::1]", "[v1.x]", "h%41",
    "127.0.0.1%2F", "xn--n3h", "\ufb01.com", "\u0661\u0662\u0667.0.0.1", "", "h_x", "a..b",
])
ports = st.sampled_from(["", ":5000", ":1", ":0", ":00080", ":", ":65536", ":99999999", ":5x", ": 1", ":+1"])
seps = st.sampled_from(["\\", "@", "\\@", "/", "?", "#", "%40", "%5C", ":", "[", "]", "\t", "\r\n", " ", "\x00",
                        ";", "/\\", "\\\\", "", "@@", ":@", "%2F", "\x7f", "\u3002", "\uff0f"])
userinfo = st.sampled_from(["", "alice@", "alice:pw@", ":@", "@", "a%40b@", "127.0.0.1:1@", "a\\b@", "[::1]@"])
paths = st.sampled_from(["", "/", "/v2/", "/upload/x?y=1", "?q", "#f", "/a\\b", "/%2e%2e/"])


@st.composite
def urls(draw: st.DrawFn) -> str:
    """scheme://[userinfo]host[port]<sep>[host port]path: two hosts, so a parser can pick either."""
    scheme = draw(schemes)
    head = f"{scheme}://" if scheme else draw(st.sampled_from(["//", "", "/"]))
    first = draw(userinfo) + draw(hosts) + draw(ports)
    second = draw(hosts) + draw(ports) if draw(st.booleans()) else ""
    return head + first + draw(seps) + second + draw(paths)


free_text = st.text(alphabet=st.sampled_from(list("htps:/\\@[]%.1270:5#?; \t\n\x00aA\u00e9\uff0e")), max_size=40)


def _connects_to(url: str) -> Origin | None:
    """Where urllib3 opens the connection for ``url`` (PoolManager.urlopen does exactly this), or None."""
    try:
        pool = _POOLS.connection_from_url(url)
    except (ValueError, urllib3.exceptions.HTTPError):  # LocationParseError, an unknown scheme
        return None
    return Origin(pool.scheme, str(pool.host), int(pool.port or 0))


def _two_faced(other: str) -> str:
    return f"http://{other}\\@{HOME}/upload/x"


@given(st.one_of(urls(), free_text))
@example(_two_faced("127.0.0.1:1"))
@example(_two_faced("127.0.0.2:5000"))
@example("http://h%41:1/")
@example("http://[::1]:5000/v2/")
def test_the_origin_ormb_decides_is_where_urllib3_connects(url: str) -> None:
    try:
        decided = origin_of(url)
    except ValueError:
        return  # refused: nothing is sent there at all
    assert _connects_to(url) == decided, f"ormb decided {decided}, urllib3 connects elsewhere"


@given(st.one_of(urls(), free_text))
@example(_two_faced("127.0.0.1:1"))
@example("/upload/x")
@example("//127.0.0.2:5000/upload")
@example("http://127.0.0.1:5000@127.0.0.2:5000/")
def test_credentials_go_only_where_urllib3_connects_to_the_registry(given_url: str) -> None:
    """What the registry hands out (a Location, a Link), resolved as ormb does: refused, or home
    exactly when urllib3 would connect to the registry's own origin."""
    registry = Registry(HOME)
    try:
        url = registry.resolve_url("/v2/team/m/blobs/uploads/", given_url, "an upload")
    except RegistryError:
        return
    target = _connects_to(url)
    assert target is not None, "ormb accepted a URL urllib3 cannot open"
    assert registry.is_home(url) == (target == registry.origin)
    assert origin_of(url) == target
