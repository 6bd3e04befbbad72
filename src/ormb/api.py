"""The Python API: one plain function per command.  The CLI is a thin layer over these."""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ormb._version import __version__
from ormb.cache import (
    LoadedModel,
    blob_size,
    cache_entries,
    cache_key,
    collectable,
    load_model,
    open_cache,
)
from ormb.config import Settings, load_settings
from ormb.content.layout import OCILayout
from ormb.content.target import Fetcher, Target, fetch_bytes, push_bytes
from ormb.errors import (
    AuthenticationError,
    IntegrityError,
    InvalidArtifactError,
    InvalidReferenceError,
    KeyFileError,
    ModelFormatError,
    NotFoundError,
    OrmbError,
    StorageError,
    UsageError,
    VerificationError,
)
from ormb.model import modelpack, ormbformat
from ormb.model.export import export_model
from ormb.model.files import FileListing, list_model_files
from ormb.model.formats import guess_format, validate_format
from ormb.model.ormbfile import FILENAME, Metadata, as_utc, load_metadata, parse_metadata_dict
from ormb.model.packing import PackedModel
from ormb.model.signature import FRAMEWORK_HINTS, read_signature
from ormb.model.unpack import FileHashes
from ormb.oci import mediatypes
from ormb.oci.descriptor import Descriptor, Manifest, layers_size
from ormb.oci.grammar import MAX_SIGNATURE_BUNDLE, MAX_SIGNATURES, is_host, is_tag
from ormb.oci.graph import Node, parse_node
from ormb.oci.reference import USERINFO_REFUSED, Reference, parse_reference
from ormb.progress import ProgressListener
from ormb.pushing import TransferResult as TransferResult
from ormb.pushing import _ref, _registry, _remote, _resolve_cached, _result
from ormb.pushing import push as push
from ormb.registry.credentials import Credential, CredentialStore
from ormb.registry.remote import RemoteRepository
from ormb.registry.transport import TransportOptions
from ormb.signing import (
    FileRecords,
    PublicKey,
    check_listed,
    check_model,
    export_ignore_paths,
    generate_key_pair,
    is_signature,
    load_private_key,
    manifest_hashes,
    model_files,
    refuse_subject,
    sign_files,
    signature_artifact,
    signed_files,
    trusted_signatures,
    verification_keys,
    verify_manifest,
)
from ormb.signing.bundle import compare_files, read_unverified
from ormb.signing.referrer import SIGNATURE_ARTIFACT_TYPE, shape_problem
from ormb.signing.verify import Verified, first_bundle
from ormb.transfer import copy, copy_referrers


@dataclass(frozen=True)
class SaveResult:
    reference: Reference
    digest: str
    size: int  # bytes of the model layer(s)
    format: str
    format_guessed: bool
    files: int
    skipped: tuple[str, ...] = ()
    signature_filled: bool = False  # the signature was read from the model file
    notes: tuple[str, ...] = ()  # things the user may want to know (e.g. why no signature was read)
    hidden: tuple[str, ...] = ()  # hidden files and directories left out (".git/", ".DS_Store")
    artifact_format: str = "ormb"


@dataclass(frozen=True)
class _Prepared:
    metadata: Metadata
    model_dir: Path
    listing: FileListing
    format_guessed: bool
    signature_filled: bool
    notes: tuple[str, ...]


def _prepare(root: Path, metadata: Metadata | dict[str, object] | None, *, read_model_signature: bool,
             artifact_format: str | None = None, include_hidden: bool | None = None) -> _Prepared:
    """Metadata and files of a model directory, validated; the signature read from the model if empty.

    The files are ``root/model/`` when it exists.  Without it they are the files of ``root`` itself
    (less ``ormbfile.yaml``): a directory without an ormbfile.yaml, or one packed as ModelPack, which is
    how ``ormb export`` lays a ModelPack model out.
    """
    if not root.is_dir():
        raise ModelFormatError(f"{root} is not a directory", "give the directory that holds ormbfile.yaml and model/")
    ormbfile = root / FILENAME
    if metadata is not None:
        meta = metadata if isinstance(metadata, Metadata) else parse_metadata_dict(metadata)
        model_dir = root / "model" if (root / "model").is_dir() else root
    elif ormbfile.is_file():
        meta = load_metadata(ormbfile)
        model_dir = root / "model"
        if not model_dir.is_dir():
            if (artifact_format or meta.artifact_format) != "modelpack":
                raise ModelFormatError(f"{root} has an {FILENAME} but no model/ directory",
                                       "put the model files in model/, or save them as they are with "
                                       "--format modelpack")
            model_dir = root
    else:
        meta = Metadata()
        model_dir = root / "model" if (root / "model").is_dir() else root
    hidden = include_hidden if include_hidden is not None else bool(meta.include_hidden)
    listing = list_model_files(model_dir, include_hidden=hidden, exclude=(FILENAME,) if model_dir == root else ())
    if not listing.files:
        raise ModelFormatError(f"{model_dir} holds no files" + (" (hidden ones left out)" if listing.hidden else ""))
    relative = [f.relative for f in listing.files]
    guessed = meta.format is None
    format_name = meta.format or guess_format(relative)
    validate_format(format_name, model_dir, relative)
    meta = meta.model_copy(update={"format": format_name})
    notes: list[str] = []
    if listing.outside:
        shown = ", ".join(listing.outside[:2]) + (f" and {len(listing.outside) - 2} more" if len(listing.outside) > 2
                                                  else "")
        notes.append(f"packed what {len(listing.outside)} link(s) outside {model_dir} name: {shown}")
    filled = False
    if read_model_signature and not (meta.signature and (meta.signature.inputs or meta.signature.outputs)):
        found = read_signature(format_name, model_dir, relative)
        if found.signature is not None:
            meta = meta.model_copy(update={"signature": found.signature})
            filled = True
        elif found.note:
            notes.append(f"no signature read from the model: {found.note}")
    return _Prepared(meta, model_dir, listing, guessed, filled, tuple(notes))


ARTIFACT_FORMATS = ("ormb", "modelpack")
MODELPACK_NAMES = ("cncf", "cnai")


def save(
    path: str | Path,
    reference: str | Reference,
    *,
    metadata: Metadata | dict[str, object] | None = None,
    artifact_format: str | None = None,
    modelpack_names: str | None = None,
    include_hidden: bool | None = None,
    compression: str = "stored",
    read_model_signature: bool = True,
    settings: Settings | None = None,
    progress: ProgressListener | None = None,
) -> SaveResult:
    """Pack ``path`` (ormbfile.yaml + model/) into the local cache under ``reference``.

    ``metadata`` (a :class:`Metadata` or a dict with ormbfile.yaml's keys) replaces the
    ormbfile.yaml, so a training script needs no file.  Without either, the format is guessed
    from the file names.  The files are taken from ``path/model`` if it exists, else from
    ``path`` itself.  An empty signature is read from the model file where ormb can (ONNX,
    SavedModel).  Nothing is written into ``path``.  Hidden files and directories (``.git/``,
    ``.cache/``, ``.DS_Store``) are left out and listed in the result, unless ``include_hidden``.

    ``artifact_format``: ``ormb`` (the default: the original ormb's one-layer format, which
    Harbor shows) or ``modelpack`` (CNCF ModelPack: a layer per file, deduplicated per file,
    partial pulls); ``modelpack_names``: ``cncf`` (default) or ``cnai`` (the pre-v0.0.7 names
    every released Harbor up to 2.15 shows).  ormbfile.yaml's ``artifactFormat``,
    ``modelpackNames`` and ``includeHidden`` choose too; the arguments win.
    """
    settings = settings or load_settings()
    ref = _ref(reference, settings, need_tag=True)
    if artifact_format is not None and artifact_format not in ARTIFACT_FORMATS:
        raise UsageError(f"unknown artifact format {artifact_format!r}", "use 'ormb' or 'modelpack'")
    if modelpack_names is not None and modelpack_names not in MODELPACK_NAMES:
        raise UsageError(f"unknown ModelPack names {modelpack_names!r}", "use 'cncf' or 'cnai'")
    prepared = _prepare(Path(path), metadata, read_model_signature=read_model_signature,
                        artifact_format=artifact_format, include_hidden=include_hidden)
    metadata_, listing, format_name = prepared.metadata, prepared.listing, prepared.metadata.format or "Others"
    guessed = prepared.format_guessed
    cache = open_cache(settings)
    chosen = artifact_format or metadata_.artifact_format or "ormb"
    names = modelpack_names or metadata_.modelpack_names or "cncf"
    with cache.writing():
        if chosen == "modelpack":
            packed: PackedModel = modelpack.pack(
                listing, metadata_, cache, name=ref.repository.rsplit("/", 1)[-1], names=names, progress=progress)
        else:
            packed = ormbformat.pack(listing, metadata_, cache, compression=compression, progress=progress)
        cache.tag(packed.manifest, cache_key(ref))
    return SaveResult(
        ref, packed.manifest.digest, layers_size(packed.layers), format_name, guessed,
        len(listing.files), listing.skipped, prepared.signature_filled, prepared.notes, listing.hidden, chosen,
    )


def init(path: str | Path, *, force: bool = False) -> Metadata:
    """Write a starting ``path/ormbfile.yaml``: format, framework and signature read from ``path/model``."""
    root = Path(path)
    target = root / FILENAME
    if target.exists() and not force:
        raise StorageError(f"{target} exists", "edit it, or pass --force to replace it")
    prepared = _prepare(root, Metadata(), read_model_signature=True)
    if prepared.model_dir == root:
        raise ModelFormatError(f"{root} has no model/ directory", "put the model files in model/ first")
    meta = prepared.metadata
    framework = FRAMEWORK_HINTS.get(meta.format or "")
    if framework:
        meta = meta.model_copy(update={"framework": framework})
    text = "# Written by 'ormb init': check it, fill in the rest, then 'ormb save'.\n" + meta.to_yaml()
    target.write_text(text, encoding="utf-8")
    return meta


@dataclass(frozen=True)
class ExportResult:
    reference: Reference
    digest: str
    directory: Path
    files: tuple[str, ...]
    verified_by: str = ""  # the fingerprint of the key whose signature the files matched (when verifying)
    notes: tuple[str, ...] = ()  # what the user may want to know (e.g. that no ormbfile.yaml was written)


UNSIGNED_METADATA_NOTE = (f"{FILENAME} was not written: no signature covers it (it is made from the model's config), "
                          "and a verified export writes only signed files")


def export(
    reference: str | Reference,
    directory: str | Path = ".",
    *,
    metadata: bool = True,
    include: tuple[str, ...] = (),
    max_expand: int | None = None,
    verify_key: KeyPaths | None = None,
    trust_dir: str | Path | None = None,
    signature_file: str | Path | None = None,
    settings: Settings | None = None,
    progress: ProgressListener | None = None,
) -> ExportResult:
    """Unpack a cached model into ``directory`` (``model/`` plus ``ormbfile.yaml`` for the ormb format;
    the files at their paths for ModelPack, optionally only those matching ``include`` globs).

    Nothing outside ``directory`` is touched whatever the layers hold (docs/security.md); the layers
    together may unpack to at most ``max_expand`` bytes (default: 20 times the compressed bytes read of
    them, at least 1 GiB; see :mod:`ormb.model.budget`).

    With ``verify_key`` (public key files) or ``trust_dir`` (default: ``$ORMB_VERIFY_KEY``,
    ``$ORMB_TRUST_DIR``), a model that is unsigned, signed by another key or whose files differ from
    the signed ones is refused (:class:`VerificationError`) and nothing is written: the files are
    compared with the signature from the manifest where it says them (ModelPack), and every file
    written is hashed and compared before anything moves into ``directory``.

    ``signature_file``: also write the model's signature there (the one that verified, else the
    first), for ``model_signing verify key --signature FILE`` on the exported files.  A verified export
    writes only signed files: no ``ormbfile.yaml`` (a note says so), and ``directory`` may hold nothing
    but the model's paths (:class:`UsageError` otherwise)."""
    settings = settings or load_settings()
    ref = _ref(reference, settings)
    keys = _verification_keys(verify_key, trust_dir, settings)
    cache = open_cache(settings)
    model = load_model(cache, cache.resolve(cache_key(ref)), ref=ref)
    dest = Path(directory)
    files = None
    if model.is_modelpack:
        files = _selected_files(cache, model, include)
    elif include:
        raise UsageError(f"{ref} is one tar layer (ormb format): --include needs a ModelPack artifact",
                         "export it without --include, or save it with --format modelpack to export files selectively")
    check = None
    verified: Verified | None = None
    bundle = b""
    if keys is not None:
        refuse_subject(model.manifest, what=str(ref))
        signatures = trusted_signatures(cache, model.manifest_desc, keys, what=str(ref))
        check_listed(signatures, model.manifest, what=str(ref))
        complete = not include

        def check(hashes: FileHashes) -> None:
            nonlocal verified
            verified = check_model(signatures, hashes, what=str(ref), complete=complete)
    elif signature_file is not None:
        bundle = first_bundle(cache, model.manifest_desc, what=str(ref))
    write_metadata = metadata and check is None
    paths = export_model(cache, model.manifest, dest, metadata=model.metadata if write_metadata else None, files=files,
                         local_copy=lambda d: cache.blob_path(d.digest), max_expand=max_expand, progress=progress,
                         check=check, stamps=cache.stamps if check is None else None)
    if verified is not None:
        bundle = verified.signature.bundle
    if signature_file is not None:
        _write_file(Path(signature_file), bundle)
    notes = (UNSIGNED_METADATA_NOTE,) if metadata and not write_metadata else ()
    return ExportResult(ref, model.manifest_desc.digest, dest, paths, verified.fingerprint if verified else "", notes)


def _write_file(path: Path, data: bytes) -> None:
    """``data`` at ``path``, whole or not at all (a temporary file beside it, then renamed over it)."""
    try:
        fd, name = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.",
                                    suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.chmod(name, 0o644)
            os.replace(name, path)
        finally:
            Path(name).unlink(missing_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {exc.strerror}") from None


def _matches(patterns: tuple[str, ...], path: str) -> bool:
    return any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], p) for p in patterns)


def _selected_files(cache: OCILayout, model: LoadedModel, include: tuple[str, ...]) -> list[modelpack.LayerFile]:
    """The layers of a per-file artifact (ModelPack, KitOps) to export: those matching ``include``, all in the cache."""
    files = modelpack.layer_files(model.manifest)
    if include:
        files = [f for f in files if f.path is not None and _matches(include, str(f.path))]
        if not files:
            raise NotFoundError(f"no file of {model.manifest_desc.digest[:19]} matches {', '.join(include)}",
                                "'ormb inspect REF' lists the files")
    missing = [f for f in files if not cache.exists(f.descriptor)]
    if missing:
        raise NotFoundError(f"{len(missing)} layer(s) of this model are not in the cache, e.g. {missing[0].path}",
                            "it was pulled with --include: pull it again without, or export only what was pulled")
    return files


@dataclass(frozen=True)
class ModelSummary:
    reference: Reference  # for a name that is not a reference: Reference("", name)
    digest: str
    format: str
    created: datetime | None  # when this reference entered the local cache (save, pull, tag)
    size: int
    problem: str = ""  # why this reference is not one usable model (an index, a missing blob, ...); "" if it is
    cached_size: int | None = None  # bytes of the layers the cache holds, when a partial pull left some out


def _cached(model: LoadedModel) -> datetime | None:
    """When the cache recorded the reference (the index entry's org.opencontainers.image.created)."""
    return _timestamp(model.manifest_desc.annotations.get(mediatypes.ANNOTATION_CREATED))


def _timestamp(stamp: object) -> datetime | None:
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        return as_utc(datetime.fromisoformat(stamp.replace("Z", "+00:00")))
    except ValueError:  # not a time, or not one in UTC (0001-01-01T00:00:00+23:59)
        return None


def models(*, settings: Settings | None = None) -> list[ModelSummary]:
    """Every reference in the local cache, sorted by repository then tag; ``created`` is when it entered the cache.

    A reference that is not one readable model (an index, a missing or oversized blob, a
    container image, a name that does not parse) is listed too, with ``problem`` saying
    what is wrong; it never hides the others.
    """
    settings = settings or load_settings()
    cache = open_cache(settings)
    out = []
    for entry in cache_entries(cache, settings):
        ref = entry.reference or Reference("", entry.name)
        desc = entry.descriptor
        stamp = _timestamp(desc.annotations.get(mediatypes.ANNOTATION_CREATED)) if desc else None
        if desc is None or entry.problem:
            out.append(ModelSummary(ref, desc.digest if desc else "", "-", stamp, 0, entry.problem))
            continue
        try:
            model = load_model(cache, desc)
        except OrmbError as exc:
            out.append(ModelSummary(ref, desc.digest, "-", stamp, 0, exc.message))
            continue
        except Exception as exc:
            out.append(ModelSummary(ref, desc.digest, "-", stamp, 0,
                                    f"its metadata cannot be read ({type(exc).__name__}; please report it)"))
            continue
        problem = "" if model.is_model else f"not a model: its config is {model.manifest.config.media_type}"
        held = sum(layer.size for layer in model.manifest.layers if cache.exists(layer))
        out.append(ModelSummary(ref, desc.digest, model.format, _cached(model), model.size, problem,
                                held if held < model.size else None))
    return sorted(out, key=lambda m: (m.reference.name, m.reference.tag or "", m.reference.digest or ""))


@dataclass(frozen=True)
class ModelDetails:
    reference: Reference
    digest: str
    media_type: str
    size: int
    created: datetime | None  # the model's own date: ormbfile.yaml's created, a ModelPack createdAt, ...
    metadata: Metadata
    config: dict[str, object]
    layers: tuple[dict[str, object], ...]
    files: tuple[str, ...] = field(default=())
    artifact_format: str = "ormb"
    cached: datetime | None = None  # when the reference entered the local cache (None for --remote)
    model_info: dict[str, object] = field(default_factory=dict)  # another tool's config, as it wrote it


def inspect(reference: str | Reference, *, settings: Settings | None = None) -> ModelDetails:
    """Metadata, files and digests of a cached model."""
    settings = settings or load_settings()
    ref = _ref(reference, settings)
    cache = open_cache(settings)
    model = load_model(cache, _resolve_cached(cache, ref), ref=ref)
    return _details(ref, model, cached=_cached(model))


def _details(ref: Reference, model: LoadedModel, *, cached: datetime | None = None) -> ModelDetails:
    if model.is_modelpack:
        files = tuple(f.title or f"<{f.packing} layer {f.descriptor.digest[7:19]}>"
                      for f in modelpack.layer_files(model.manifest))
        kind = "modelpack"
    else:
        files = tuple(name for name, _ in model.files())
        kind = "ormb"
    return ModelDetails(
        ref, model.manifest_desc.digest, model.manifest.media_type, model.size, model.metadata.created, model.metadata,
        model.manifest.config.to_dict(), tuple(layer.to_dict() for layer in model.manifest.layers), files, kind,
        cached, modelpack.model_info(model.manifest, model.config),
    )


def tag(source: str | Reference, target: str | Reference, *, settings: Settings | None = None) -> Reference:
    """Give a cached model a second reference; no bytes are copied."""
    settings = settings or load_settings()
    src, dst = _ref(source, settings), _ref(target, settings, need_tag=True)
    cache = open_cache(settings)
    desc = _resolve_cached(cache, src)
    fetch_bytes(cache, desc)  # the manifest must be there to be tagged
    cache.tag(desc, cache_key(dst))
    return dst


def remove(reference: str | Reference, *, settings: Settings | None = None) -> str:
    """Forget a reference; its blobs stay until :func:`prune`.  Returns the manifest digest.

    A name in the cache that is not a reference (written by another tool; ``models`` lists it
    with a problem) is removed by that exact name.
    """
    settings = settings or load_settings()
    cache = open_cache(settings)
    try:
        key = cache_key(_ref(reference, settings))
    except InvalidReferenceError:
        if not isinstance(reference, str) or reference not in {e.name for e in cache_entries(cache, settings)}:
            raise
        key = reference
    return cache.untag(key).digest


@dataclass(frozen=True)
class PruneResult:
    blobs: int
    bytes: int


def prune(*, settings: Settings | None = None) -> PruneResult:
    """Delete every blob no entry of the cache reaches, and leftovers of interrupted writes.

    It walks the graph as ``copy`` does (indexes, subjects, manifests recorded as
    ``application/json``), from every entry of index.json (named or not); what it cannot
    parse it keeps, with every digest written in it.
    """
    settings = settings or load_settings()
    cache = open_cache(settings)
    removed = freed = 0
    with cache.collecting():
        keep, orphans = collectable(cache)
        cache.drop_roots(orphans)  # signatures of models that are gone
        file_records(settings).forget_all_but(keep)
        for digest in list(cache.blob_digests()):
            if digest not in keep:
                freed += blob_size(cache, digest)
                cache.delete_blob(digest)
                removed += 1
        cache.clear_leftovers()
    return PruneResult(removed, freed)


@dataclass(frozen=True)
class CheckResult:
    blobs: int  # blobs read and hashed
    bytes: int


def check(*, settings: Settings | None = None) -> CheckResult:
    """Read every blob of the cache and hash it whole: the full check, which trusts no verified stamp
    (:mod:`ormb.content.stamps`), so that what a stamp cannot see (a flipped bit on the disk, a write by root)
    is found.  Blobs that do not match lose their stamps and are named in an :class:`IntegrityError` (exit 4)."""
    settings = settings or load_settings()
    cache = open_cache(settings)
    blobs = total = 0
    damaged: list[str] = []
    for digest in list(cache.blob_digests()):
        checked = cache.rehash_blob(digest)
        if checked is None:  # pruned meanwhile
            continue
        size, ok = checked
        blobs += 1
        total += size
        if not ok:
            damaged.append(digest)
    if damaged:
        shown = ", ".join(damaged[:5]) + (f" and {len(damaged) - 5} more" if len(damaged) > 5 else "")
        raise IntegrityError(f"{len(damaged)} of {blobs} cached blobs do not match their digests: {shown}",
                             "the cache is damaged: remove the models that use them ('ormb rm'), run 'ormb prune', "
                             "then pull or save them again")
    return CheckResult(blobs, total)


def version() -> str:
    return __version__


# -- registries ------------------------------------------------------------------------------


def registry_host(text: str) -> tuple[str, bool | None]:
    """``host[:port]`` from what a user may type for a registry, as Docker takes it: a URL
    (``https://host:5000/``, ``http://host/v2/``) or a bare host; and, for an ``http://`` or
    ``https://`` URL, whether that asks for plain HTTP."""
    value = text.strip()
    plain: bool | None = None
    lowered = value.lower()
    for scheme, is_plain in (("https://", False), ("http://", True)):
        if lowered.startswith(scheme):
            value, plain = value[len(scheme):], is_plain
            break
    value = value.split("/", 1)[0]
    if "@" in value:  # https://user:password@host: refused, and the text is not repeated (CI logs keep errors)
        raise InvalidReferenceError(USERINFO_REFUSED, "give the user with -u USER and the password with --password-stdin")
    if not is_host(value):
        raise InvalidReferenceError(f"{text!r} is not a registry host",
                                    "give HOST or HOST:PORT, e.g. registry.example.com or localhost:5000")
    return value, plain


def login(host: str, username: str, password: str, *, settings: Settings | None = None,
          options: TransportOptions | None = None) -> str:
    """Check the credentials against the registry, then store them in ``$ORMB_HOME/config.json``.

    ``host`` may be a URL, as with ``docker login``; returns the host the credentials are stored for.
    """
    settings = settings or load_settings()
    name, plain = registry_host(host)
    if not username or not password:
        raise AuthenticationError("a username and a password are needed to log in", "give -u USER and a password")
    if plain is not None and (options is None or options.plain_http is None):
        options = dataclasses.replace(options or TransportOptions(), plain_http=plain)
    _registry(name, settings, options, Credential(username, password)).ping()
    CredentialStore(settings.home / "config.json").store(name, Credential(username, password))
    return name


def logout(host: str, *, settings: Settings | None = None) -> None:
    """Forget the credentials ormb stored for ``host`` (a host or a URL, as for :func:`login`)."""
    settings = settings or load_settings()
    host = registry_host(host)[0]
    if not CredentialStore(settings.home / "config.json").remove(host):
        raise NotFoundError(f"not logged in to {host}", "nothing to do; 'ormb login HOST' stores credentials")


def pull(reference: str | Reference, *, include: tuple[str, ...] = (), verify_key: KeyPaths | None = None,
         trust_dir: str | Path | None = None, settings: Settings | None = None,
         options: TransportOptions | None = None, progress: ProgressListener | None = None) -> TransferResult:
    """Download a model into the local cache; every byte is verified before it becomes visible.

    ``include`` (globs on file paths) fetches only the matching layers of a ModelPack artifact.
    The model's signatures (OpenSSF model-signing referrers) come along.  With ``verify_key``
    (public key files) or ``trust_dir`` (default: ``$ORMB_VERIFY_KEY``, ``$ORMB_TRUST_DIR``) a model
    that is unsigned, signed by another key or whose files differ from the signed ones is refused
    (:class:`VerificationError`) and no reference is written: a ModelPack model is checked from its
    manifest before any layer is downloaded; the ormb format's layer is read once it is in the cache,
    before the reference is written (a refused layer is deleted again).
    """
    settings = settings or load_settings()
    ref = _ref(reference, settings)
    keys = _verification_keys(verify_key, trust_dir, settings)
    cache = open_cache(settings)
    remote = _remote(ref, settings, options)
    try:
        before: str | None = cache.resolve(cache_key(ref)).digest
    except NotFoundError:
        before = None
    concurrency = (options or TransportOptions()).concurrency
    wanted = None
    if include:
        def wanted(manifest: Manifest, layer: Descriptor) -> bool:
            if not modelpack.is_modelpack(manifest):
                raise UsageError(f"{ref} is one tar layer (ormb format): --include needs a ModelPack artifact",
                                 "pull it without --include")
            path = layer.annotations.get(modelpack.ANNOTATION_FILEPATH) or \
                layer.annotations.get(modelpack.OLD_ANNOTATION_FILEPATH) or ""
            return _matches(include, path)
    root = remote.fetch_reference(ref.version)
    before_root = None
    verified = ""
    if keys is not None:
        refuse_subject(parse_node(root[1], root[0].media_type), what=str(ref))  # a copy would follow it
        model = load_model(remote, *root, ref=ref)
        signatures = trusted_signatures(remote, model.manifest_desc, keys, what=str(ref))
        listed = check_listed(signatures, model.manifest, what=str(ref))
        verified = listed.fingerprint if listed else ""
        if listed is None:  # the files are inside layers: compared once the layers are in the cache
            if include:
                raise UsageError(f"--include with a verify key needs a model whose files the manifest lists, and {ref} "
                                 "keeps them in tar layers", "pull it without --include")

            def before_root() -> None:
                nonlocal verified
                records = file_records(settings).pending()  # remembered only once the model verified
                hashes = model_files(cache, model.manifest, records)
                verified = check_model(signatures, hashes, what=str(ref)).fingerprint
                records.commit()
    try:
        with cache.writing():  # complete_existing: a manifest in the cache may be a partial pull's, its layers missing
            stats = copy(remote, ref.version, cache, cache_key(ref), concurrency=concurrency, progress=progress,
                         include=wanted, complete_existing=True, root=root, before_root=before_root)
    except BaseException:
        if keys is not None:  # a refused (or failed) verifying pull leaves nothing: no reference, no blob
            with contextlib.suppress(OrmbError, OSError):  # what the user sees is why the pull failed
                _forget_unreferenced(cache, root[0], root[1])
        raise
    signatures_copied, notes = _pull_signatures(remote, cache, stats.root.digest, concurrency, required=keys is not None)
    return _result(ref, stats, before != stats.root.digest or bool(stats.copied), signatures_copied, verified, notes)


def _pull_signatures(remote: RemoteRepository, cache: OCILayout, subject: str, concurrency: int, *,
                     required: bool) -> tuple[list[Descriptor], tuple[str, ...]]:
    """Bring the model's signature referrers into the cache (small: a manifest and a bundle each).

    Without a verify key, a registry that cannot list them does not fail the pull: it is a note.
    """
    def is_bundle(desc: Descriptor, node: Node) -> bool:  # checked before its blobs are fetched
        try:
            return is_signature(desc) and not shape_problem(node.to_manifest())
        except InvalidArtifactError:
            return False
    try:
        with cache.writing():
            return copy_referrers(remote, cache, subject, accept=is_bundle, limit=MAX_SIGNATURES,
                                  artifact_type=SIGNATURE_ARTIFACT_TYPE, concurrency=concurrency), ()
    except OrmbError as exc:
        if required:
            raise
        return [], (f"the model's signatures did not come along: {exc.message}",)


def _forget_unreferenced(cache: OCILayout, manifest_desc: Descriptor, data: bytes) -> None:
    """Delete the blobs of a refused pull that nothing in the cache references (as prune would): its
    manifest, config and layers, whatever else the cache holds of them stays."""
    try:
        manifest = parse_node(data, manifest_desc.media_type).to_manifest()
    except OrmbError:
        return
    mine = {manifest_desc.digest, manifest.config.digest, *(layer.digest for layer in manifest.layers)}
    with cache.collecting():
        keep = collectable(cache)[0]
        for digest in sorted(mine - keep):
            cache.delete_blob(digest)


def inspect_remote(reference: str | Reference, *, settings: Settings | None = None,
                   options: TransportOptions | None = None) -> ModelDetails:
    """Like :func:`inspect`, read from the registry without pulling the layers."""
    settings = settings or load_settings()
    ref = _ref(reference, settings)
    remote = _remote(ref, settings, options)
    desc, data = remote.fetch_reference(ref.version)
    return _details(ref, load_model(remote, desc, data, ref=ref))


def tags(repository: str | Reference, *, settings: Settings | None = None,
         options: TransportOptions | None = None) -> list[str]:
    """The registry's tags of a repository, all pages."""
    return list(iter_tags(repository, settings=settings, options=options))


def iter_tags(repository: str | Reference, *, settings: Settings | None = None,
              options: TransportOptions | None = None) -> Iterator[str]:
    """The registry's tags of a repository as they arrive, page by page (at most ``grammar.MAX_TAGS``)."""
    settings = settings or load_settings()
    ref = repository if isinstance(repository, Reference) else parse_reference(
        repository, settings.default_registry, default_tag=False)
    return _remote(ref, settings, options).tags()


# -- signing -----------------------------------------------------------------------------------

KeyPaths = str | Path | tuple[str | Path, ...] | list[str | Path]
ORMB_PREFIX = "model/"  # what the ormb format's file records are relative to (the signed root)


def file_records(settings: Settings) -> FileRecords:
    """The cache's per-layer file lists (``$ORMB_HOME/cache/.files``): a layer is read at most once."""
    return FileRecords(settings.cache_dir / ".files")


def _key_paths(value: KeyPaths | None) -> tuple[str | Path, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str | Path) else tuple(value)


def _verification_keys(verify_key: KeyPaths | None, trust_dir: str | Path | None,
                       settings: Settings) -> tuple[PublicKey, ...] | None:
    """The public keys a pull or export must verify with, or None when it need not verify
    (:func:`ormb.signing.keys.verification_keys`: the arguments win over the environment)."""
    return verification_keys(_key_paths(verify_key), trust_dir, env_keys=settings.verify_keys,
                             env_trust_dir=settings.trust_dir, env_problem=settings.verify_env_problem)


@dataclass(frozen=True)
class SignResult:
    reference: Reference
    digest: str  # the model's manifest
    signature: str  # the signature referrer's manifest digest
    fingerprint: str  # the signing key's (SHA-256 of its PEM public key)
    files: int
    remote: bool  # stored in the registry (True) or the local cache
    attached: bool = False  # a signature made elsewhere (model_signing), attached


def sign(
    reference: str | Reference,
    key: str | Path | None = None,
    *,
    password: str | bytes | None = None,
    attach: str | Path | None = None,
    remote: bool = False,
    settings: Settings | None = None,
    options: TransportOptions | None = None,
) -> SignResult:
    """Sign a model with the private key file ``key`` (PEM: ECDSA P-256/P-384/P-521 or Ed25519, optionally
    encrypted: ``password``, else ``$ORMB_KEY_PASSWORD``), or ``attach`` a signature ``model_signing sign
    key`` made over the model's directory.

    The signature is an OpenSSF model-signing bundle over every file of the model (paths as export
    lays them out; for the ormb format, relative to ``model/``), stored as an OCI referrer of the
    model's manifest: in the local cache (``push`` then carries it), or with ``remote`` directly in
    the registry.  No weight byte is read for a ModelPack model (its manifest has the digests); the
    ormb format's layer is read once, the first time (its file digests are then kept in the cache).
    """
    settings = settings or load_settings()
    ref = _ref(reference, settings)
    if (key is None) == (attach is None):
        raise UsageError("give a private key to sign with, or a signature to attach (not both)",
                         "ormb sign REF --key KEY.pem, or ormb sign --attach SIG REF")
    target: Fetcher
    if remote:
        repository = _remote(ref, settings, options)
        desc, data = repository.fetch_reference(ref.version)
        model = load_model(repository, desc, data, ref=ref)
        target, records = repository, None
    else:
        cache = open_cache(settings)
        model = load_model(cache, _resolve_cached(cache, ref), ref=ref)
        target, records = cache, file_records(settings)
    if not model.is_model:
        raise InvalidArtifactError(f"{ref} is not a model (its config is {model.manifest.config.media_type})",
                                   "ormb signs models saved by ormb, ModelPack and KitOps artifacts")
    files = signed_files(manifest_hashes(target, model.manifest, records))
    if key is not None:
        private = load_private_key(key, password)
        bundle = sign_files(files, private, name=ref.repository.rsplit("/", 1)[-1],
                            ignore_paths=export_ignore_paths(model.manifest))
        fingerprint = private.public.fingerprint
    else:
        assert attach is not None
        bundle, fingerprint = _attachable(Path(attach), {f.path: f.sha256 for f in files}, ref)
    subject = Descriptor(model.manifest.media_type, model.manifest_desc.digest, model.manifest_desc.size)
    artifact = signature_artifact(subject, bundle)
    if remote:
        for blob, content in (artifact.config, artifact.bundle, (artifact.descriptor, artifact.manifest_bytes)):
            push_bytes(repository, blob, content)  # the manifest last: the fallback index is updated with it
    else:
        with cache.writing():
            for blob, content in (artifact.config, artifact.bundle, (artifact.descriptor, artifact.manifest_bytes)):
                push_bytes(cache, blob, content)
            cache.add_root(artifact.descriptor)
    return SignResult(ref, subject.digest, artifact.descriptor.digest, fingerprint, len(files), remote,
                      attach is not None)


def _attachable(path: Path, files: dict[str, str], ref: Reference) -> tuple[bytes, str]:
    """A signature file made elsewhere, read and checked against the model's files before it is stored.

    Its signature is not verified here (no public key is given); ``ormb verify`` does that.  What is
    checked: a key-signed model-signing bundle over exactly these files, so a signature of another
    directory (or of the directory holding ``ormbfile.yaml`` and ``model/``) is refused now."""
    try:
        with open(path, "rb") as handle:
            bundle = handle.read(MAX_SIGNATURE_BUNDLE + 1)
    except OSError as exc:
        raise StorageError(f"cannot read the signature {path}: {exc.strerror}") from None
    claimed = read_unverified(bundle)
    try:
        compare_files(claimed.files, claimed.ignore_paths, files)
    except VerificationError as exc:
        raise VerificationError(f"the signature {path} was not made over {ref}: {exc.message.split(': ', 1)[-1]}",
                                "sign the directory the model's files are in: for the ormb format its model/, "
                                "for ModelPack the saved directory (model_signing ... --ignore-paths ormbfile.yaml)"
                                ) from None
    return bundle, claimed.key_hint or ""


@dataclass(frozen=True)
class VerifyResult:
    reference: Reference
    digest: str  # the model's manifest
    fingerprint: str  # of the trusted key whose signature matched
    key: str  # where that key came from (its file)
    signature: str  # the signature referrer's digest
    files: int  # files compared: every file of the model
    remote: bool


def verify(
    reference: str | Reference,
    *,
    keys: KeyPaths | None = None,
    trust_dir: str | Path | None = None,
    remote: bool = False,
    settings: Settings | None = None,
    options: TransportOptions | None = None,
) -> VerifyResult:
    """Check that a model (in the cache, or with ``remote`` in its registry) carries a signature by one of
    ``keys`` (public key files) or the keys in ``trust_dir`` whose file list is exactly the model's:
    same paths, same SHA-256, none missing, none added.  Raises :class:`VerificationError` (exit 4).

    A ModelPack model is compared from its manifest; the ormb format's files from the cache's record
    of its layer (made while saving or pulling), else by reading the layer once (from the registry
    with ``remote``: downloaded, not stored)."""
    settings = settings or load_settings()
    ref = _ref(reference, settings)
    public = _verification_keys(keys, trust_dir, settings)
    if public is None:
        raise KeyFileError("no public key to verify with",
                           "give --key KEY.pub or --trust-dir DIR, or set ORMB_VERIFY_KEY or ORMB_TRUST_DIR")
    if remote:
        repository = _remote(ref, settings, options)
        desc, data = repository.fetch_reference(ref.version)
        model = load_model(repository, desc, data, ref=ref)
        verified = verify_manifest(repository, model.manifest_desc, model.manifest, public, what=str(ref))
    else:
        cache = open_cache(settings)
        model = load_model(cache, _resolve_cached(cache, ref), ref=ref)
        verified = verify_manifest(cache, model.manifest_desc, model.manifest, public, what=str(ref),
                                   records=file_records(settings))
    return VerifyResult(ref, model.manifest_desc.digest, verified.fingerprint, verified.key_source,
                        verified.signature.referrer.digest, verified.files, remote)


@dataclass(frozen=True)
class KeyResult:
    private_key: Path
    public_key: Path
    algorithm: str
    fingerprint: str


def generate_key(private_key: str | Path, public_key: str | Path | None = None, *, algorithm: str = "ecdsa-p256",
                 password: str | bytes | None = None) -> KeyResult:
    """Make a signing key pair: ``private_key`` (PKCS#8 PEM, mode 0600, encrypted with ``password`` if
    given) and ``public_key`` (default: the private key's name with ``.pub``); never over an existing file."""
    private_path = Path(private_key)
    public_path = Path(public_key) if public_key is not None else private_path.with_suffix(".pub")
    if public_path == private_path:
        raise UsageError(f"the public key would overwrite {private_path}", "name the private key KEY.pem")
    made = generate_key_pair(private_path, public_path, algorithm, password)
    return KeyResult(private_path, public_path, made.public.algorithm, made.public.fingerprint)


# -- copy between registries and layout directories --------------------------------------------


@dataclass(frozen=True)
class CopyResult:
    source: str
    destination: str
    digest: str
    transferred: tuple[str, ...]
    transferred_bytes: int
    existing: tuple[str, ...]
    mounted: tuple[str, ...]
    referrers: tuple[str, ...]


def _endpoint(text: str, settings: Settings, options: TransportOptions | None,
              pushing: bool = False) -> tuple[Target, str, Reference | None]:
    """(Target, reference in it, registry reference) for ``oci:PATH[:TAG]`` or a registry reference."""
    if text.startswith("oci:"):
        path, sep, tag = text[4:].rpartition(":")
        if not sep or "/" in tag:
            path, tag = text[4:], "latest"
        if not is_tag(tag):
            raise InvalidReferenceError(f"invalid layout reference {text!r}: {tag!r} is not a valid tag",
                                        "use oci:PATH or oci:PATH:TAG, the tag 1-128 ASCII letters, digits, '_.-'")
        return OCILayout(Path(path)), tag, None
    ref = parse_reference(text, settings.default_registry)
    return _remote(ref, settings, options, pushing=pushing), ref.version, ref


def copy_model(source: str, destination: str, *, referrers: bool = False, settings: Settings | None = None,
               options: TransportOptions | None = None, progress: ProgressListener | None = None) -> CopyResult:
    """Copy a model between registries, or to/from an OCI layout directory (``oci:PATH:TAG``), streaming.

    Nothing goes through the local cache. Within one registry, blobs are mounted, not sent.
    ``referrers`` brings along what refers to the model (signatures, SBOMs) from a registry.

    No signature is verified (``$ORMB_VERIFY_KEY``/``$ORMB_TRUST_DIR`` do not apply): a copy moves bytes, each
    checked against its digest; verify where the model is loaded (:func:`pull`, :func:`export`, :func:`verify`).
    """
    settings = settings or load_settings()
    src, src_ref, src_registry = _endpoint(source, settings, options)
    dst, dst_ref, dst_registry = _endpoint(destination, settings, options, pushing=True)
    if referrers and not isinstance(src, RemoteRepository):
        raise UsageError("--referrers needs a registry as the source: an OCI layout has no referrers API",
                         "copy without --referrers, or from the registry the layout came from")
    if dst_registry is not None and not dst_registry.tag:
        raise InvalidReferenceError(f"{destination} has no tag", "give the destination a tag")
    if dst_registry is not None:
        dst_ref = dst_registry.tag or dst_ref
    mount = None
    if src_registry is not None and dst_registry is not None and src_registry.registry == dst_registry.registry:
        repository = src_registry.repository

        def mount(blob: Descriptor) -> list[str]:
            return [repository]
    concurrency = (options or TransportOptions()).concurrency
    stats = copy(src, src_ref, dst, dst_ref, concurrency=concurrency, progress=progress, mount_from=mount)
    copied_referrers: list[str] = []
    if referrers:
        copied_referrers = [r.digest for r in copy_referrers(src, dst, stats.root.digest, concurrency=concurrency,
                                                             progress=progress, mount_from=mount)]
    return CopyResult(source, destination, stats.root.digest, tuple(d.digest for d in stats.copied),
                      stats.copied_bytes, tuple(d.digest for d in stats.skipped), tuple(d.digest for d in stats.mounted),
                      tuple(copied_referrers))
