"""The one grammar of names, tags and digests, and the size limits, shared by client and server.

Everything here follows the OCI distribution spec v1.1 ("Pulling manifests": ``<name>``,
``<reference>``) and image-spec ("Digests"), restricted to what ormb can verify (sha256 and
sha512).  Patterns are ASCII-only (``re.ASCII``: no Unicode letters or digits sneak in
through ``\\w``/``\\d``) and anchored with ``\\Z`` (``$`` would accept a trailing newline).

The client (:mod:`ormb.oci.reference`) and the embedded registry (:mod:`ormb.server`)
import these and nothing else, so a name one side accepts the other accepts too.
"""

from __future__ import annotations

import re

# -- names, tags, digests ------------------------------------------------------------------

PATH_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
REPOSITORY = rf"{PATH_COMPONENT}(?:/{PATH_COMPONENT})*"
TAG = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
DIGEST = r"(?:sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})"
HOST_COMPONENT = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
HOST = rf"(?:{HOST_COMPONENT}(?:\.{HOST_COMPONENT})*|\[[A-Fa-f0-9:]+\])(?::[0-9]{{1,5}})?"

PATH_COMPONENT_RE = re.compile(rf"{PATH_COMPONENT}\Z", re.ASCII)
REPOSITORY_RE = re.compile(rf"{REPOSITORY}\Z", re.ASCII)
TAG_RE = re.compile(rf"{TAG}\Z", re.ASCII)
DIGEST_RE = re.compile(rf"{DIGEST}\Z", re.ASCII)
HOST_RE = re.compile(rf"{HOST}\Z", re.ASCII)
DECIMAL_RE = re.compile(r"[0-9]{1,18}\Z", re.ASCII)  # a size or count in a header: str.isdigit() takes '²' too

ALGORITHMS = {"sha256": 64, "sha512": 128}  # algorithm -> hex length

MAX_REPOSITORY = 255  # characters of a repository name (the path, without the registry host)


def is_repository(value: str) -> bool:
    """A repository name (``team/model``), the distribution spec's ``<name>``."""
    return len(value) <= MAX_REPOSITORY and REPOSITORY_RE.match(value) is not None


def is_tag(value: str) -> bool:
    return TAG_RE.match(value) is not None


def is_digest(value: str) -> bool:
    """A sha256 or sha512 digest in lower-case hex: the only digests ormb can verify."""
    return DIGEST_RE.match(value) is not None


def is_decimal(value: str) -> bool:
    """ASCII digits that fit in 64 bits: a number in a header (Range, Retry-After, OCI-Chunk-Min-Length)."""
    return DECIMAL_RE.match(value) is not None


def is_host(value: str) -> bool:
    """A registry host, ``name[:port]`` or ``[ipv6][:port]``."""
    return HOST_RE.match(value) is not None


# -- size limits -----------------------------------------------------------------------------

MAX_MANIFEST = 4 << 20  # a manifest or index, in bytes (what distribution accepts)
MAX_DESCRIPTOR_SIZE = (1 << 63) - 1  # a descriptor's size: the image spec's int64 (distribution refuses more)
MAX_METADATA_BLOB = 16 << 20  # a blob read whole into memory: a config, a signature bundle
MAX_JSON_DEPTH = 32  # nesting of another tool's config, Kitfile or annotation that ormb reads (manifests: any)
MAX_ERROR_BODY = 64 << 10  # of an error answer, the part read to show the registry's words
MAX_TAG_PAGE = 16 << 20  # one page of a tag or catalog list
MAX_TAG_PAGES = 10_000  # pages of a tag list followed before giving up
MAX_TAGS = 1_000_000  # tags of one repository, all pages together
MAX_TAG_LIST_BYTES = 256 << 20  # bytes of one repository's tag list, all pages together
MAX_PAGE_ENTRIES = 10_000  # entries the registry returns in one page of a tag or catalog list (a larger n is capped)
MAX_TOKEN_LIFETIME = 24 * 3600  # seconds a Bearer token is reused at most, whatever its expires_in says
MAX_REDIRECTS = 5  # redirects followed for one request (each hop's origin checked again)
MAX_GRAPH_DEPTH = 8  # indexes nested in indexes, followed at most this deep
MAX_TAR_ENTRY_NAME = 4096  # bytes of a path in a layer
# Signatures of one model.  Anyone who can push may attach referrers; the referrers list is asked for with
# ?artifactType= (the signature type only), and at most MAX_SIGNATURES of the entries it lists are read, a
# manifest (MAX_MANIFEST) and one bundle (MAX_SIGNATURE_BUNDLE) each, MAX_SIGNATURE_BYTES in all; an error
# that finds no good signature says which limit it reached.  A genuine signature behind more junk than
# that is not seen: docs/security.md "Signed models".
MAX_SIGNATURES = 128  # signature referrers of one model read when verifying or pulled along
MAX_SIGNATURE_BUNDLE = 4 << 20  # one signature bundle (a statement of ~25,000 files; ormb's are a few KB)
MAX_SIGNATURE_BYTES = 64 << 20  # signature manifests and bundles read for one model, in all
MAX_SIGNATURE_CONFIG = 4096  # a signature referrer's config (the empty JSON object {}: 2 bytes)

# -- chunk sizes -----------------------------------------------------------------------------

IO_CHUNK = 1 << 20  # reads and writes of blob content
UPLOAD_CHUNK = 64 << 20  # PATCH size when a large blob is uploaded in chunks
