"""Model references, parsed like Docker's: ``[host[:port]/]repository[:tag][@sha256:digest]``."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ormb.errors import InvalidReferenceError
from ormb.oci.grammar import MAX_REPOSITORY, PATH_COMPONENT_RE, is_digest, is_host, is_tag

DEFAULT_TAG = "latest"


@dataclass(frozen=True)
class Reference:
    """A parsed reference.  ``tag`` or ``digest`` (or both) is set after :func:`parse_reference`."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``registry/repository``, the part that names a repository."""
        return f"{self.registry}/{self.repository}"

    @property
    def version(self) -> str:
        """What the registry resolves: the digest when there is one, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.registry, self.repository, tag, None)

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


USERINFO_REFUSED = "a user name or password does not belong in a registry address (refused, and not repeated here)"
USERINFO_HINT = "log in with 'ormb login HOST -u USER --password-stdin'; credentials are then sent to HOST only"


def is_loopback_host(host: str) -> bool:
    """``localhost``, ``127.0.0.0/8`` or ``::1``, with or without a port (``[::1]:5000``)."""
    if host.startswith("["):
        name = host[1 : host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:
        name = host.split(":")[0]
    else:
        name = host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def parse_reference(text: str, default_registry: str, *, default_tag: bool = True) -> Reference:
    """Parse ``text``; a reference without a host uses ``default_registry``.

    With ``default_tag`` a reference with neither tag nor digest gets the tag ``latest``.
    """
    original = text
    if not text or text != text.strip():
        raise InvalidReferenceError(f"invalid reference {original!r}: empty or surrounded by spaces")
    digest = None
    if "@" in text:
        text, _, digest = text.partition("@")
        if not is_digest(digest):
            if digest.startswith(("sha256:", "sha512:")):  # a digest mistyped: safe to show
                raise InvalidReferenceError(f"invalid reference {original!r}: {digest!r} is not a sha256/sha512 digest")
            raise InvalidReferenceError(  # user:password@host/...: never repeated (CI logs keep errors)
                f"invalid reference: what follows '@' is not a sha256/sha512 digest; {USERINFO_REFUSED}", USERINFO_HINT)
    tag = None
    last_slash = text.rfind("/")
    last_colon = text.rfind(":")
    if last_colon > last_slash:
        text, tag = text[:last_colon], text[last_colon + 1 :]
        if not is_tag(tag):
            raise InvalidReferenceError(
                f"invalid reference {original!r}: tag {tag!r} must be 1-128 ASCII letters, digits, '_', '.' or '-', not starting with '.' or '-'"
            )
    first, sep, rest = text.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        registry, path = first, rest
        if not is_host(registry):
            raise InvalidReferenceError(f"invalid reference {original!r}: {registry!r} is not a valid registry host")
    else:
        registry, path = default_registry, text
    if not path:
        raise InvalidReferenceError(f"invalid reference {original!r}: no repository name")
    for component in path.split("/"):
        if not PATH_COMPONENT_RE.match(component):
            raise InvalidReferenceError(
                f"invalid reference {original!r}: repository component {component!r} must be lowercase letters "
                "and digits, separated by '.', '_', '__' or '-'"
            )
    if len(path) > MAX_REPOSITORY:
        raise InvalidReferenceError(f"invalid reference {original!r}: repository name longer than {MAX_REPOSITORY}")
    if tag is None and digest is None and default_tag:
        tag = DEFAULT_TAG
    return Reference(registry, path, tag, digest)
