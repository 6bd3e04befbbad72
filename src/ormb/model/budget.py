"""How much one export may write: one budget for all its layers, measured against what was actually read.

A layer's declared size is a claim until its last byte has been read and hashed (the storage initializer
streams from the registry; a manifest may declare 1 TiB for a blob of 64 KiB), so no limit derives from
it.  The rule, for the whole export:

- without ``max_expand``: what the layers unpack to may be at most ``EXPAND_RATIO`` times the compressed
  bytes read of them so far, and at least ``MIN_EXPAND``;
- with ``max_expand`` (``--max-expand`` / ``ORMB_MAX_EXPAND``): at most that, in all.

"What the layers unpack to" is the decompressed bytes of tar layers (headers and padding included) and of
compressed raw layers (KitOps ``raw+gzip``), plus ``ENTRY_COST`` and the length of its name for every entry
and every directory the export creates, including the directories a path implies.  An uncompressed raw
layer writes exactly the bytes it is read from (it cannot expand): its bytes are neither charged nor
credited, its file and directories are.
"""

from __future__ import annotations

from ormb.errors import UnsafeArchiveError
from ormb.units import human_size

# Model weights compress by 1.1-2x; a layer that unpacks to 20 times its size is a dataset of zeros or a bomb.
EXPAND_RATIO = 20
MIN_EXPAND = 1 << 30
ENTRY_COST = 4096  # what an entry costs the disk besides its bytes (inode, directory entry)


class ExpansionBudget:
    """The running account of one export; every check raises :class:`UnsafeArchiveError` past the limit."""

    def __init__(self, max_expand: int | None = None) -> None:
        self.max_expand = max_expand
        self.received = 0  # compressed bytes read of the charged layers
        self.spent = 0     # decompressed bytes of finished layers, entries and directories
        self.streaming = 0  # decompressed bytes of the layer being read
        self.layer = ""     # which layer, and which entry or directory last, for the message
        self.at = ""

    def limit(self, more: int = 0) -> int:
        """The limit once ``more`` compressed bytes have been read on top of what has been."""
        if self.max_expand is not None:
            return self.max_expand
        return max(MIN_EXPAND, EXPAND_RATIO * (self.received + more))

    def start_layer(self, name: str) -> None:
        self.spent += self.streaming
        self.streaming = 0
        self.layer, self.at = name, ""

    def read(self, compressed: int) -> None:
        """``compressed`` more bytes of a charged layer were read (before they are decompressed)."""
        self.received += compressed

    def stream(self, total: int) -> None:
        """The current layer has decompressed ``total`` bytes so far."""
        self.streaming = total
        limit = self.limit()
        if self.spent + total > limit:
            self._refuse(f"{self.at} in {self.layer}" if self.at else self.layer, limit)

    def entry(self, name: str) -> None:
        """One more entry or directory named ``name`` (for the message and the cost of its name)."""
        self.spent += ENTRY_COST + len(name)
        self.at = name
        limit = self.limit()
        if self.spent + self.streaming > limit:
            self._refuse(name, limit)

    def ahead(self, upto: int, layer_left: int, where: str) -> None:
        """Whether the current layer may reach ``upto`` decompressed bytes (the end of a file whose size its
        header gives), checked before the file is written: against the largest limit this layer can reach,
        when all of its ``layer_left`` compressed bytes still to come have been read."""
        limit = self.limit(layer_left)
        if self.spent + upto > limit:
            self._refuse(where, limit)

    @staticmethod
    def _refuse(where: str, limit: int) -> None:
        if len(where) > 160:  # a name may be a megabyte long; the message stays one readable line
            where = where[:80] + "..." + where[-60:]
        raise UnsafeArchiveError(
            f"the model expands to more than {human_size(limit)} (at {where}); refusing",
            "if you trust it, raise the limit: --max-expand SIZE or ORMB_MAX_EXPAND=SIZE, e.g. 500G")
