"""Fetch a model from a registry straight into a model server's directory.

This is what a KServe or Seldon Core init container runs (``ormb-storage-initializer SRC DEST``).
The layer streams from the registry into the destination without a cache copy, verified
while it streams; the destination is written all-or-nothing and nothing outside it is touched (see
:mod:`ormb.model.staging`).

Layouts:

- ``triton`` (default): ``DEST/1/<files>``: a Triton model version directory, also what
  TF Serving reads (``DEST/<version>/saved_model.pb``).
- ``mlflow``: ``DEST/<files>``: the files at the top (MLflow, MLServer, KServe's sklearn server).
- ``none``: ``DEST/model/<files>`` and ``DEST/ormbfile.yaml``, as ``ormb export`` writes it.

ModelPack models have no ``model/`` directory: their files land at ``DEST/1/`` (triton) or ``DEST/``.

With a verify key (``--verify-key``/``$ORMB_VERIFY_KEY``, ``--trust-dir``/``$ORMB_TRUST_DIR``) the
model must carry a signature by one of those keys over exactly its files.  The signature is found
and verified first, and a ModelPack model's file list compared from its manifest, all before a weight
byte is downloaded; files inside tar layers (the ormb format) are hashed while they are staged and
compared before anything moves into ``DEST``.  A refused model leaves ``DEST`` as it was.  A verified
export writes only signed files: no ``ormbfile.yaml``, and ``DEST`` may hold nothing but the model's paths.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ormb.cache import load_model
from ormb.config import Settings, load_settings
from ormb.errors import InvalidReferenceError
from ormb.model.export import export_model
from ormb.model.ormbfile import FILENAME
from ormb.model.unpack import FileHashes
from ormb.oci.graph import parse_node
from ormb.oci.reference import Reference, parse_reference
from ormb.progress import ProgressListener
from ormb.registry.client import Registry
from ormb.registry.credentials import Credential, CredentialStore
from ormb.registry.remote import RemoteRepository
from ormb.registry.transport import TransportOptions
from ormb.signing import check_listed, check_model, refuse_subject, trusted_signatures, verification_keys

LAYOUTS = ("triton", "mlflow", "none")
SCHEME = "ormb://"


@dataclass(frozen=True)
class InitializedModel:
    reference: Reference
    digest: str
    directory: Path
    files: tuple[str, ...]
    format: str | None
    verified_by: str = ""  # with a verify key: the fingerprint of the key whose signature matched
    notes: tuple[str, ...] = ()  # what the user may want to know (e.g. that no ormbfile.yaml was written)


def parse_source(source: str, default_registry: str) -> Reference:
    """``ormb://host/repo:tag`` or a bare reference, as the original initializer took."""
    text = source[len(SCHEME):] if source.startswith(SCHEME) else source
    if "://" in text:
        raise InvalidReferenceError(f"unsupported source {source!r}", "use ormb://HOST/REPOSITORY:TAG or HOST/REPOSITORY:TAG")
    return parse_reference(text, default_registry)


CREDENTIALS_HINT = ("set ORMB_USERNAME and ORMB_PASSWORD in the container's environment (e.g. from a Kubernetes "
                    "Secret), or mount a Docker config.json as $ORMB_HOME/config.json")


def credentials_from_environment(settings: Settings) -> Credential | CredentialStore:
    """``ORMB_USERNAME``/``ORMB_PASSWORD`` when set, else the config files (a mounted Docker config works)."""
    username, password = os.environ.get("ORMB_USERNAME"), os.environ.get("ORMB_PASSWORD")
    if username and password:
        return Credential(username, password)
    return CredentialStore(settings.home / "config.json")


def pull_and_export(
    source: str,
    destination: str | Path,
    *,
    layout: str = "triton",
    metadata: bool = True,
    max_expand: int | None = None,
    verify_key: str | Path | tuple[str | Path, ...] | None = None,
    trust_dir: str | Path | None = None,
    settings: Settings | None = None,
    options: TransportOptions | None = None,
    progress: ProgressListener | None = None,
) -> InitializedModel:
    """Download ``source`` and lay it out in ``destination`` for a model server (the same export as
    ``ormb export``, straight from the registry; ``max_expand`` as there).  ``verify_key`` (public key
    files) and ``trust_dir`` (default: ``$ORMB_VERIFY_KEY``, ``$ORMB_TRUST_DIR``): see the module doc."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    settings = settings or load_settings()
    ref = parse_source(source, settings.default_registry)
    key_files = (verify_key,) if isinstance(verify_key, str | Path) else tuple(verify_key or ())
    keys = verification_keys(key_files, trust_dir, env_keys=settings.verify_keys, env_trust_dir=settings.trust_dir,
                             env_problem=settings.verify_env_problem)
    registry = Registry(ref.registry, options or TransportOptions(), credentials_from_environment(settings),
                        login_hint=CREDENTIALS_HINT)
    remote = RemoteRepository(registry, ref.repository)
    desc, data = remote.fetch_reference(ref.version)  # one GET: the bytes are verified and reused
    if keys is not None:  # before anything else is fetched (the config included)
        refuse_subject(parse_node(data, desc.media_type), what=str(ref))
    model = load_model(remote, desc, data, ref=ref)
    dest = Path(destination)
    check = None
    verified = ""
    if keys is not None:
        signatures = trusted_signatures(remote, model.manifest_desc, keys, what=str(ref))
        listed = check_listed(signatures, model.manifest, what=str(ref))  # ModelPack: before any weight byte
        verified = listed.fingerprint if listed else ""

        def check(hashes: FileHashes) -> None:  # what was staged, before it moves into place
            nonlocal verified
            verified = check_model(signatures, hashes, what=str(ref)).fingerprint
    write_metadata = metadata and check is None  # a verified export writes only signed files
    paths = export_model(remote, model.manifest, dest, metadata=model.metadata if write_metadata else None,
                         subdirectory="1" if layout == "triton" else "", strip_prefix=layout != "none",
                         max_expand=max_expand, progress=progress, concurrency=registry.options.concurrency,
                         check=check)
    notes = (f"{FILENAME} was not written: no signature covers it (it is made from the model's config), and a "
             "verified export writes only signed files",) if metadata and not write_metadata else ()
    return InitializedModel(ref, model.manifest_desc.digest, dest, paths, model.metadata.format, verified, notes)
