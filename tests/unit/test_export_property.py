"""The export promise, tried by a generator of hostile layers (hypothesis) instead of a list of cases.

Each example builds random tar layers (directories, files, symlinks relative and absolute, through
earlier links, in chains, to ``..``; hard links; duplicates; odd names) and, for ModelPack, raw
layers whose paths may run through those links; exports them with the code every export uses
(``ormb export``, the storage initializer's layouts) into a destination that sits in a sentinel
tree: a parent directory with a file and a sibling directory holding a secret.  After every run:

- the export failed with an ormb error (never another exception), and the destination and the
  sentinel tree are exactly as before; or
- it succeeded, every path under the destination resolves inside it, every hard link points at an
  inode the export made (no name outside the destination shares it), the sentinel tree is exactly
  as before, and, with a ``max_expand``, what the export added (the bytes of its new files, 4 KiB for
  every new name, directories included) fits in it.

``HYPOTHESIS_PROFILE=deep`` runs many more examples than CI does.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from conftest import compress
from ormb.content.memory import MemoryStore
from ormb.errors import OrmbError
from ormb.model import modelpack
from ormb.model.budget import ENTRY_COST
from ormb.model.export import export_model
from ormb.model.ormbfile import Metadata
from ormb.model.staging import STAGING_PREFIX
from ormb.oci import mediatypes
from ormb.oci.descriptor import Descriptor, Manifest

ABS = "\x00ABS\x00"  # replaced by the sentinel tree's absolute path once it exists

# Few names, so that entries collide, nest in each other and run through each other's links; the
# names that are refused on sight (``..``, too long, reserved) are rare, so most examples go deep.
COMPONENTS = ["a", "b", "sub", "model", "1", ".", "ormbfile.yaml", ".ormbfile.yaml.tmp", "é", "日本", "c\\d", " ",
              "\u202e"]
RARE_COMPONENTS = ["..", "", "x" * 300, STAGING_PREFIX + "x", "/".join(["deep"] * 40)]
LINK_TARGETS = ["..", "../..", ".", "a", "b", "../a", "a/b", "b/..", "b/../..", "sub/../..", "../sibling/secret",
                "../../sibling/secret", "../../sibling", "../../../sibling", "model/a", "../model", "ormbfile.yaml",
                "../ormbfile.yaml", "1", "../1/a", "a/", "./a/./b"]
RARE_LINK_TARGETS = [f"{ABS}/sibling/secret", f"{ABS}/sibling", "/etc/passwd", "/", "", "x" * 300, "../../../.."]

# Layouts of the one export code path: (subdirectory, strip the ormb format's model/)
LAYOUTS = {"export / none": ("", False), "mlflow": ("", True), "triton": ("1", True)}


def _mostly(common: list[str], rare: list[str], one_in: int) -> st.SearchStrategy[str]:
    """A common value, or about one time in ``one_in`` a rare one (duplicates weigh; shrinking goes to the
    first, common, values).  Built once: strategies built per draw make generation the slow part."""
    return st.sampled_from(common * max(1, (one_in - 1) * len(rare) // len(common)) + rare)


COMPONENT = _mostly(COMPONENTS, RARE_COMPONENTS, 80)
LEAD = _mostly(["", "", "./"], ["/", f"{ABS}/sibling/", "../"], 100)
TRAIL = st.sampled_from(["", "", "", "/"])
KIND = _mostly(["file"] * 7 + ["dir"] * 3 + ["symlink"] * 6 + ["hardlink"] * 3, ["fifo"], 150)
LINK_TARGET = _mostly(LINK_TARGETS, RARE_LINK_TARGETS, 20)
HARD_LINK_TARGET = _mostly(["model/a", "a", "model/sub/a"], [f"{ABS}/sibling/secret", "../sibling/secret"], 5)
TAME_KIND = st.sampled_from(["file", "file", "dir", "symlink", "hardlink"])
PAYLOAD = st.binary(max_size=64)


TAME_COMPONENT = st.sampled_from(["a", "b", "sub", "é", "ormbfile.yaml", "1"])


@st.composite
def names(draw: st.DrawFn, model_prefix: bool, tame: bool = False) -> str:
    name = "/".join(draw(st.lists(TAME_COMPONENT if tame else COMPONENT, min_size=1, max_size=4 - tame)))
    if model_prefix and (tame or draw(st.integers(0, 19)) < 19):
        name = "model/" + name
    return name if tame else draw(LEAD) + name + draw(TRAIL)


NAMES = {True: names(True), False: names(False)}
TAME_NAMES = {True: names(True, tame=True), False: names(False, tame=True)}


@st.composite
def entries(draw: st.DrawFn, model_prefix: bool) -> list[tuple[str, str, str | bytes]]:
    """(name, kind, payload): payload is the bytes of a file or the target of a link.

    A tame layer (plain names, links only at earlier entries) mostly exports, so the checks of a
    successful export get links to work on; the others mostly are refused, somewhere deep.
    """
    out: list[tuple[str, str, str | bytes]] = []
    tame = draw(st.integers(0, 2)) == 0
    for _ in range(draw(st.integers(0, 10))):
        kind = draw(TAME_KIND if tame else KIND)
        name = draw((TAME_NAMES if tame else NAMES)[model_prefix])
        earlier = [n for n, _, _ in out]
        choice = draw(st.integers(0, 2 if tame else 4))
        files = [n for n, k, _ in out if k == "file"]
        if kind == "hardlink" and not files and choice < 4:
            kind = "file"  # a hard link before any file can only be refused: mostly make it a file
        if kind == "file":
            payload: str | bytes = draw(PAYLOAD)
        elif kind == "symlink" and choice >= 2 and earlier:  # at an earlier entry: from here, from the top, any
            other = draw(st.sampled_from(earlier))
            payload = (os.path.relpath(other.strip("/") or ".", os.path.dirname(name.strip("/")) or ".")
                       if choice == 2 else other if choice == 3 else draw(NAMES[False]))
        elif kind == "symlink":
            payload = draw(LINK_TARGET)
        elif kind == "hardlink":  # mostly at an earlier file (a link that can work), else at anything
            payload = draw(st.sampled_from(files) if choice < 3 and files else
                           st.sampled_from(earlier) if choice == 3 and earlier else
                           HARD_LINK_TARGET if choice < 4 else NAMES[model_prefix])
        else:
            payload = b""
        out.append((name, kind, payload))
    return out


ENTRIES = {True: entries(True), False: entries(False)}


# Mostly the default budget; sometimes one these examples can exceed (4 KiB an entry, every directory too)
MAX_EXPAND = st.sampled_from([None] * 6 + [16 << 10, 64 << 10, 256 << 10])


@dataclass
class Case:
    modelpack: bool
    layers: list[tuple[str, object]]  # (packing, entries for tar layers | (path, bytes) for raw)
    layout: str
    metadata: bool
    clone: bool
    existing: str  # what the destination holds before: "nothing", "files", "planted links"
    max_expand: int | None = None  # the export's budget (None: the default, far above these examples)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    if draw(st.booleans()):
        return Case(False, [("tar+gzip", draw(ENTRIES[True]))], draw(st.sampled_from(sorted(LAYOUTS))),
                    draw(st.booleans()), False, draw(st.sampled_from(["nothing", "files", "planted links"])),
                    draw(MAX_EXPAND))
    layers: list[tuple[str, object]] = []
    for _ in range(draw(st.integers(1, 3))):
        packing = draw(st.sampled_from(["raw", "raw", "tar", "tar+gzip", "tar+zstd"]))
        if packing == "raw":
            layers.append((packing, (draw(NAMES[False]), draw(st.binary(max_size=32)))))
        else:
            layers.append((packing, draw(ENTRIES[False])))
    return Case(True, layers, draw(st.sampled_from(["export / none", "triton"])), draw(st.booleans()),
                draw(st.booleans()), draw(st.sampled_from(["nothing", "files", "planted links"])), draw(MAX_EXPAND))


def _tar(members: list[tuple[str, str, str | bytes]], root: str) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name.replace(ABS, root))
            info.mode = 0o644
            if kind == "file":
                assert isinstance(payload, bytes)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                         "fifo": tarfile.FIFOTYPE}[kind]
            if isinstance(payload, str):
                info.linkname = payload.replace(ABS, root)
            tar.addfile(info)
    return raw.getvalue()


def _place(cache: MemoryStore, case: Case, root: str) -> Manifest:
    descs = []
    if not case.modelpack:
        members = case.layers[0][1]
        assert isinstance(members, list)
        data = compress(_tar(members, root), "tar+gzip")
        descs.append(Descriptor.of_bytes(mediatypes.ORMB_LAYER, data))
        config = Descriptor.of_bytes(mediatypes.ORMB_CONFIG, b"{}")
        blobs = [data]
    else:
        blobs = []
        for packing, content in case.layers:
            if packing == "raw":
                assert isinstance(content, tuple)
                path, data = content
                descs.append(Descriptor.of_bytes(modelpack.layer_type("weight"), data,
                                                 {modelpack.ANNOTATION_FILEPATH: path.replace(ABS, root)}))
            else:
                assert isinstance(content, list)
                data = compress(_tar(content, root), packing)
                descs.append(Descriptor.of_bytes(modelpack.layer_type("weight", packing), data))
            blobs.append(data)
        config = Descriptor.of_bytes(modelpack.CONFIG, b"{}")
    for desc, data in zip(descs, blobs, strict=True):
        cache.push(desc, io.BytesIO(data))
        if case.clone:  # a verified local copy, as the cache's blob file is for ormb export
            _blob_file(desc).write_bytes(data)
    return Manifest(config, tuple(descs), artifact_type=modelpack.ARTIFACT_TYPE if case.modelpack else None)


def _snapshot(root: Path, skip: str | None = None) -> dict[str, tuple[object, ...]]:
    """Everything below ``root``, links not followed: type, bytes, mode, inode, link count, times."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if skip is not None and Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d != skip]
            filenames = [f for f in filenames if f != skip]
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            out[str(path.relative_to(root))] = _facts(path)
    return out


def _facts(path: Path) -> tuple[object, ...]:
    st_ = path.lstat()
    facts: tuple[object, ...] = (stat.S_IFMT(st_.st_mode), stat.S_IMODE(st_.st_mode), st_.st_ino, st_.st_nlink,
                                 st_.st_mtime_ns, st_.st_ctime_ns)
    if stat.S_ISLNK(st_.st_mode):
        return (*facts, os.readlink(path))
    if stat.S_ISREG(st_.st_mode):
        return (*facts, hashlib.sha256(path.read_bytes()).hexdigest())
    return facts


def _sentinel(top: Path, existing: str) -> tuple[Path, set[int]]:
    """The sentinel tree around the destination; returns the destination and the sentinel inodes."""
    (top / "parent-file").write_bytes(b"parent")
    sibling = top / "sibling"
    (sibling / "sub").mkdir(parents=True)
    (sibling / "secret").write_bytes(b"secret")
    (sibling / "sub" / "x").write_bytes(b"x")
    dest = top / "dest"
    if existing != "nothing":
        (dest / "model").mkdir(parents=True)
        (dest / "keep.txt").write_bytes(b"mine")
        (dest / "model" / "old.bin").write_bytes(b"old")
    if existing == "planted links":  # a local user who can write into the destination
        os.symlink("../sibling", dest / "1")
        os.symlink("../sibling/secret", dest / "ormbfile.yaml")
        os.symlink("../../sibling", dest / "model" / "a")
        os.symlink("../sibling/secret", dest / ".ormbfile.yaml.tmp")
    inodes = {(top / p).lstat().st_ino for p in _snapshot(top, skip="dest")}
    return dest, inodes


def _check_success(dest: Path, planted: dict[str, tuple[object, ...]], foreign: set[int]) -> None:
    real = os.path.realpath(dest)
    seen: dict[int, int] = {}
    links: dict[int, int] = {}
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            relative = str(path.relative_to(dest))
            st_ = path.lstat()
            assert not name.startswith(STAGING_PREFIX) or Path(dirpath) != dest, f"staging left: {name}"
            if relative in planted and planted[relative] == _facts(path):
                continue  # a link the local user planted and the export did not touch: not the export's
            resolved = os.path.realpath(path)
            assert resolved == real or resolved.startswith(real + os.sep), f"{relative} resolves to {resolved}"
            if stat.S_ISREG(st_.st_mode):
                seen[st_.st_ino] = seen.get(st_.st_ino, 0) + 1
                links[st_.st_ino] = st_.st_nlink
    for inode, count in seen.items():
        assert links[inode] == count, "a file under the destination has a name outside it"
        assert count == 1 or inode not in foreign, "a hard link to a file the export did not make"


# Examples run in memory (tmpfs) where the machine has it: on the team's ext4 (mounted with discard) every
# rmdir costs ~2 ms and the file system, not the export, would set how many examples CI affords.  The
# system calls under test (openat, O_NOFOLLOW, linkat, renameat, flock) behave the same on both.
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
BLOBS = Path(tempfile.mkdtemp(prefix="ormb-property-blobs-", dir=SCRATCH))
atexit.register(shutil.rmtree, BLOBS, True)


def _blob_file(desc: Descriptor) -> Path:
    return BLOBS / desc.digest.partition(":")[2]


# SCALE times the profile's max_examples: "ci" (100) runs 4500 examples, about 27-45 s on the team's
# 2-core machine (of which about a quarter export, a tenth with links); HYPOTHESIS_PROFILE=deep (5000)
# runs 225000 (about 40 minutes).  ORMB_PROPERTY_SCALE overrides the factor.
SCALE = int(os.environ.get("ORMB_PROPERTY_SCALE", "45"))


@settings(max_examples=settings().max_examples * SCALE,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(case=cases())
@example(case=Case(False, [("tar+gzip", [("model/b", "symlink", ".."),
                                          ("model/b/.ormbfile.yaml.tmp", "symlink", "../../sibling/secret")])],
                   "export / none", True, False, "nothing"))
@example(case=Case(True, [("tar", [("x/b", "symlink", ".."), ("x/b/e", "symlink", "../../sibling")]),
                          ("raw", ("e/new/w.bin", b"w"))], "export / none", True, False, "files"))
def test_export_never_touches_anything_outside_the_destination(case: Case) -> None:
    cache = MemoryStore()  # the blobs in memory (the cache's fsyncs would dominate); clones from BLOBS
    with tempfile.TemporaryDirectory(prefix="ormb-property-", dir=SCRATCH) as tmp:
        top = Path(tmp)
        dest, sentinel_inodes = _sentinel(top, case.existing)
        manifest = _place(cache, case, str(top))
        sentinel = _snapshot(top, skip="dest")
        before = _snapshot(dest) if dest.exists() else None
        existed = {p.lstat().st_ino for p in dest.rglob("*")} if dest.exists() else set()
        planted = {k: v for k, v in (before or {}).items() if v[0] == stat.S_IFLNK}
        subdirectory, strip = LAYOUTS[case.layout]
        try:
            export_model(cache, manifest, dest, metadata=Metadata(author="a") if case.metadata else None,
                         subdirectory=subdirectory, strip_prefix=strip,
                         local_copy=_blob_file if case.clone else None, max_expand=case.max_expand)
        except OrmbError as exc:
            event(f"refused: {type(exc).__name__}: {_reason(str(exc))}")
            assert _snapshot(top, skip="dest") == sentinel
            assert (_snapshot(dest) if dest.exists() else None) == before
            return
        event(f"exported ({_links(dest)})")
        assert _snapshot(top, skip="dest") == sentinel
        _check_success(dest, planted, sentinel_inodes | existed)
        if case.max_expand is not None:
            _check_budget(dest, before or {}, _raw_files(case, subdirectory), case.max_expand)


def _raw_files(case: Case, subdirectory: str) -> set[str]:
    """Where the uncompressed raw layers' files are in the destination (their bytes are not expansion)."""
    out = set()
    for packing, content in case.layers:
        if case.modelpack and packing == "raw":
            assert isinstance(content, tuple)
            path = str(modelpack.safe_path(content[0], "a raw layer"))
            out.add(f"{subdirectory}/{path}" if subdirectory else path)
    return out


def _check_budget(dest: Path, before: dict[str, tuple[object, ...]], raw: set[str], limit: int) -> None:
    """What the export added fits in its budget: the bytes of its new files (not the raw layers', which are
    read, not unpacked) and ENTRY_COST for every new name, directories included; the metadata is free."""
    added, inodes = 0, set()
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            relative = str(path.relative_to(dest))
            facts = _facts(path)
            if relative == "ormbfile.yaml" or (relative in before and before[relative][:3] == facts[:3]):
                continue  # the metadata, or there before (same type, mode, inode)
            added += ENTRY_COST
            st_ = path.lstat()
            if stat.S_ISREG(st_.st_mode) and relative not in raw and st_.st_ino not in inodes:
                inodes.add(st_.st_ino)
                added += st_.st_size
    assert added <= limit, f"the export added {added} bytes' worth, over its budget of {limit}"


def _reason(message: str) -> str:
    for fragment in ("nothing is written through", "points outside", "points to nothing", "absolute",
                     "'..'", "outside model/", "hard link", "special file", "two entries", "reserved",
                     "not a valid name", "replace the directory", "goes through the file", "loop", "NUL",
                     "in the way", "a file;", "a directory where", "expands to more than", "two layers",
                     "metadata"):
        if fragment in message:
            return fragment
    return message[:60]


def _links(dest: Path) -> str:
    found = set()
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            st_ = (Path(dirpath) / name).lstat()
            if stat.S_ISLNK(st_.st_mode):
                found.add("symlinks")
            elif stat.S_ISREG(st_.st_mode) and st_.st_nlink > 1:
                found.add("hard links")
    return " and ".join(sorted(found)) or "no links"
