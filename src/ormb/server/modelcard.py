"""A model card (``README.md``) as the catalog shows it: CommonMark, sanitised.

The text comes from whoever pushed the model, so it is hostile.  It is rendered by markdown-it-py
(the CommonMark reference port; why this library: docs/architecture.md) with

- **raw HTML off** (``html: False``): ``<script>``, ``<img onerror=...>``, ``<iframe>`` and every
  other tag in the text come out as visible text, never as markup;
- **links** only to ``http``, ``https`` and ``mailto`` addresses, to fragments (``#...``) and to
  relative paths; any other scheme (``javascript:``, ``data:``, ``vbscript:``, ``file:``, and
  whatever a browser might read as one) leaves the text unlinked.  External links get
  ``rel="nofollow noopener noreferrer"``; a relative link is resolved against the card's
  directory and leads to the catalog's page for that file of the model (``file_url``);
- **no images loaded**: an image is shown as a link to its address (``[image: alt]``), so a card
  cannot make the browser fetch from anywhere (no tracking pixels), and the page's
  Content-Security-Policy needs no outside source;
- **no linkify, no typographer, no plugins** that would add ``id``/``name`` attributes (DOM clobbering);
- YAML front matter (Hugging Face's ``---`` metadata block) left out, as Hugging Face shows it;
- the text read only up to :data:`CARD_CAP` bytes (the caller reads at most that).
"""

from __future__ import annotations

import functools
import posixpath
import re
import urllib.parse
from collections.abc import Sequence
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.token import Token
from markupsafe import Markup, escape

CARD_CAP = 128 << 10  # bytes of a model card (or licence) read and shown; the page says when it is cut
# markdown-it-py renders about 1-10 µs a character (bench/catalog_bench.py --card): a hostile 128 KiB card costs
# a worker about a second once; the result is kept, so later views of the same card cost nothing.
RENDERED_KEPT = 32
LINK_SCHEMES = ("http", "https", "mailto")
_SCHEME = re.compile(r"([^:/?#]*):")  # what a browser could take for a scheme: anything before a ':' in the first segment
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(?:.*?\r?\n)?---[ \t]*(?:\r?\n|\Z)", re.DOTALL)



def allowed_link(url: str) -> bool:
    """http(s) and mailto addresses, fragments and relative paths; nothing a browser could run."""
    if url.startswith("//") or url.startswith("\\"):
        return False  # another host, without saying how
    found = _SCHEME.match(url)
    if found is None:
        return True  # relative, or a fragment
    return found.group(1).lower() in LINK_SCHEMES


_md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(["table", "strikethrough"])
_md.validateLink = allowed_link  # type: ignore[method-assign]


def _target(href: str, base: str, file_url: str) -> str | None:
    """Where a link of the card leads: an outside address as it is, a fragment as it is, a
    relative path to the catalog's page for that file (None when it climbs out of the model)."""
    if href.startswith("#") or _SCHEME.match(href):
        return href
    path = urllib.parse.unquote(urllib.parse.urlsplit(href).path)
    if not path:
        return None
    joined = posixpath.normpath(posixpath.join(base, path.lstrip("/") if path.startswith("/") else path))
    if joined.startswith("../") or joined in ("..", "."):
        return None
    return file_url + urllib.parse.quote(joined, safe="/")


def _link_open(self: Any, tokens: Sequence[Token], idx: int, options: Any, env: dict[str, Any]) -> str:
    token = tokens[idx]
    href = str(token.attrs.get("href", ""))
    target = _target(href, env["base"], env["file_url"])
    if target is None:
        token.attrs.pop("href", None)  # an <a> without href: inert text
    else:
        token.attrs["href"] = target
        if _SCHEME.match(target):
            token.attrs["rel"] = "nofollow noopener noreferrer"
    return str(self.renderToken(tokens, idx, options, env))


def _image(self: Any, tokens: Sequence[Token], idx: int, options: Any, env: dict[str, Any]) -> str:
    token = tokens[idx]
    alt = self.renderInlineAsText(token.children or [], options, env) or "image"
    target = _target(str(token.attrs.get("src", "")), env["base"], env["file_url"])
    if target is None:
        return f"[image: {escape(alt)}]"
    rel = ' rel="nofollow noopener noreferrer"' if _SCHEME.match(target) else ""
    return f'<a href="{escape(target)}"{rel}>[image: {escape(alt)}]</a>'


_md.add_render_rule("link_open", _link_open)
_md.add_render_rule("image", _image)


@functools.lru_cache(maxsize=RENDERED_KEPT)
def render_card(text: str, path: str, file_url: str) -> Markup:
    """The card's HTML; ``path`` is where the card sits in the model (relative links start there and
    lead to ``file_url`` + the file's path, quoted)."""
    text = _FRONT_MATTER.sub("", text.lstrip("\ufeff"), count=1)
    html = _md.render(text, {"base": posixpath.dirname(path), "file_url": file_url})
    return Markup(html)  # built by markdown-it with raw HTML off: every text and attribute escaped
