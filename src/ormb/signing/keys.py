"""Signing keys and trusted public keys, read from PEM files.

Key types: ECDSA on P-256, P-384 and P-521 (what ``model_signing sign key`` accepts) and
Ed25519 (ormb signs and verifies it; ``model_signing`` 1.1 cannot verify it, see
docs/architecture.md "Signing").  A private key may be encrypted (PKCS#8 or OpenSSL's
traditional PEM encryption); its password comes from the caller or ``$ORMB_KEY_PASSWORD``
and never appears in an error.

A key's *fingerprint* is the SHA-256 (hex) of its public key as a PEM SubjectPublicKeyInfo,
exactly the ``verificationMaterial.publicKey.hint`` that ``model_signing`` writes into a
bundle and checks, so one string names the key in ormb's output, in the bundle and in
``model_signing``.  Anyone can recompute it: ``openssl pkey -pubin -in KEY.pub | sha256sum``.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from ormb.errors import KeyFileError, UsageError
from ormb.signing.names import ALGORITHMS, PASSWORD_ENV

MAX_KEY_FILE = 64 << 10  # bytes; a PEM key is a few hundred
KEY_SUFFIXES = (".pub", ".pem")  # what a --trust-dir may hold

PublicKeyType = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
PrivateKeyType = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

# curve -> (name shown, hash ECDSA uses with it: what model_signing and Sigstore pair with the curve)
_CURVES: dict[str, tuple[str, type[hashes.HashAlgorithm]]] = {
    "secp256r1": ("ecdsa-p256", hashes.SHA256),
    "secp384r1": ("ecdsa-p384", hashes.SHA384),
    "secp521r1": ("ecdsa-p521", hashes.SHA512),
}


def fingerprint(key: PublicKeyType) -> str:
    """SHA-256 hex of the PEM SubjectPublicKeyInfo: the bundle's ``publicKey.hint``."""
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def _algorithm(key: object, source: str) -> str:
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        curve = key.curve.name
        if curve in _CURVES:
            return _CURVES[curve][0]
        raise KeyFileError(f"{source} is an ECDSA key on the curve {curve}, which ormb does not sign with")
    raise KeyFileError(f"{source} is a {type(key).__name__.removeprefix('_')}, which ormb does not sign with")


@dataclass(frozen=True)
class PublicKey:
    """A public key that may verify signatures; ``source`` says where it came from, for messages."""

    key: PublicKeyType = field(repr=False, compare=False)
    fingerprint: str
    algorithm: str  # ecdsa-p256, ecdsa-p384, ecdsa-p521, ed25519
    source: str = field(compare=False)

    @classmethod
    def of(cls, key: PublicKeyType, source: str) -> PublicKey:
        return cls(key, fingerprint(key), _algorithm(key, source), source)

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True when ``signature`` is this key's signature of ``data``."""
        try:
            if isinstance(self.key, ed25519.Ed25519PublicKey):
                self.key.verify(signature, data)
            else:
                self.key.verify(signature, data, ec.ECDSA(_CURVES[self.key.curve.name][1]()))
        except InvalidSignature:
            return False
        return True

    def to_pem(self) -> bytes:
        return self.key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class PrivateKey:
    """A private key that signs; ``public`` is its public half."""

    key: PrivateKeyType = field(repr=False)
    public: PublicKey

    def sign(self, data: bytes) -> bytes:
        if isinstance(self.key, ed25519.Ed25519PrivateKey):
            return self.key.sign(data)
        return self.key.sign(data, ec.ECDSA(_CURVES[self.key.curve.name][1]()))


_GENERATORS: dict[str, Callable[[], PrivateKeyType]] = {
    "ecdsa-p256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ecdsa-p384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "ecdsa-p521": lambda: ec.generate_private_key(ec.SECP521R1()),
    "ed25519": ed25519.Ed25519PrivateKey.generate,
}
if tuple(_GENERATORS) != ALGORITHMS:
    raise AssertionError("ormb.signing.names.ALGORITHMS must list exactly the key types made here")


def generate_key_pair(private_path: str | Path, public_path: str | Path, algorithm: str = "ecdsa-p256",
                      password: str | bytes | None = None) -> PrivateKey:
    """Make a key pair: the private key as PKCS#8 PEM (encrypted with ``password`` if given), created
    with mode 0600 and never over an existing file; the public key as SubjectPublicKeyInfo PEM.
    P-256 (the default) is what ``model_signing`` and cosign verify everywhere."""
    if algorithm not in _GENERATORS:
        raise KeyFileError(f"unknown key algorithm {algorithm!r}", f"choose one of {', '.join(ALGORITHMS)}")
    key = _GENERATORS[algorithm]()
    secret = password.encode("utf-8") if isinstance(password, str) else password
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(secret) if secret else serialization.NoEncryption())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    public = PublicKey.of(key.public_key(), str(public_path))
    for path, data, mode in ((Path(private_path), pem, 0o600), (Path(public_path), public.to_pem(), 0o644)):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        except FileExistsError:
            raise KeyFileError(f"{path} exists; ormb does not overwrite a key", "choose another file name") from None
        except OSError as exc:
            raise KeyFileError(f"cannot create {path}: {exc.strerror}", "check the path and its permissions") from None
        with os.fdopen(fd, "wb") as out:
            out.write(data)
    return PrivateKey(key, public)


def read_key_file(path: Path, *, private: bool) -> bytes:
    """The bytes of a PEM key file, after the one rule every key file meets (``--key``, ``--verify-key``,
    a trust directory's files, ``registry serve --trust-key``):

    - exactly one PEM block: a second key in a file would be silently ignored (and the user think it trusted);
    - a key no other local user may replace (:func:`refuse_replaceable`: owned by this user or root, not
      group/world-writable, nor is any directory above it unless sticky);
    - a private key no other local user may read, as ssh demands (no group or other permission bits).

    The file is opened once (not through a final symbolic link's swap: the checks are of what was read).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO must not block
    except OSError as exc:
        raise KeyFileError(f"cannot read the key {path}: {exc.strerror}", "check the path and its permissions") from None
    opened = os.fstat(fd)
    mode = opened.st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise KeyFileError(f"{path} is not a regular file, so it is not a PEM key")
    try:
        refuse_replaceable(path, "private key" if private else "public key", opened)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as handle:
        try:
            data = handle.read(MAX_KEY_FILE + 1)
        except OSError as exc:
            raise KeyFileError(f"cannot read the key {path}: {exc.strerror}", "check the path and its permissions") from None
    if len(data) > MAX_KEY_FILE:
        raise KeyFileError(f"{path} is larger than {MAX_KEY_FILE} bytes, so it is not a PEM key")
    begins = [line for line in data.splitlines() if line.startswith(b"-----BEGIN ")]
    if not begins:
        raise KeyFileError(f"{path} is not a PEM key (no '-----BEGIN' line)")
    if len(begins) > 1:
        raise KeyFileError(f"{path} holds {len(begins)} PEM blocks; a key file holds exactly one key",
                           "put each key in its own file (a trust directory takes many)")
    if private and b"PRIVATE KEY" in begins[0] and mode & 0o077:
        raise KeyFileError(f"the private key {path} is accessible to other users (mode {stat.S_IMODE(mode):04o}), "
                           "so it may no longer be secret", f"chmod 600 {path}, and make a new key if others could read it")
    return data


def load_private_key(path: str | Path, password: str | bytes | None = None,
                     environ: Mapping[str, str] | None = None) -> PrivateKey:
    """Read a PEM private key; an encrypted one needs ``password`` or ``$ORMB_KEY_PASSWORD``."""
    path = Path(path)
    data = read_key_file(path, private=True)
    if password is None:
        password = (os.environ if environ is None else environ).get(PASSWORD_ENV)
    secret = password.encode("utf-8") if isinstance(password, str) else password
    encrypted = b"ENCRYPTED" in data
    try:
        key = serialization.load_pem_private_key(data, secret if encrypted else None)
    except TypeError:  # cryptography: "Password was not given but private key is encrypted"
        raise KeyFileError(f"{path} is encrypted and no password was given",
                           f"set {PASSWORD_ENV} to the key's password") from None
    except (ValueError, UnsupportedAlgorithm):
        if encrypted:
            raise KeyFileError(f"cannot decrypt {path}: wrong password, or not a key",
                               f"check {PASSWORD_ENV} or the password you gave") from None
        if b"PUBLIC KEY" in data:
            raise KeyFileError(f"{path} holds a public key; signing needs the private key",
                               "sign with the private key (KEY.pem); the public key (KEY.pub) is for verifying") from None
        raise KeyFileError(f"{path} is not a PEM private key ormb can read") from None
    _algorithm(key, str(path))
    assert isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey)
    return PrivateKey(key, PublicKey.of(key.public_key(), str(path)))


def public_key_from_pem(data: bytes, source: str) -> PublicKey:
    """A public key from PEM bytes (SubjectPublicKeyInfo, ``-----BEGIN PUBLIC KEY-----``)."""
    if b"PRIVATE KEY" in data:
        raise KeyFileError(f"{source} holds a private key; verifying needs only the public key",
                           "give its public half: openssl pkey -in KEY.pem -pubout -out KEY.pub")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(f"{source} is not a PEM public key ormb can read") from None
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        _algorithm(key, source)  # raises with the key's type in the message
        raise AssertionError("unreachable")
    return PublicKey.of(key, source)


def load_public_key(path: str | Path) -> PublicKey:
    path = Path(path)
    return public_key_from_pem(read_key_file(path, private=False), str(path))


def _writers(mode: int) -> str:
    return "every local user" if mode & stat.S_IWOTH else "its group"


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def refuse_replaceable(path: Path, what: str, opened: os.stat_result | None = None) -> None:
    """The rule for every key file and trust directory (as ssh's StrictModes): ``path``, after its symbolic
    links, and every directory above it are owned by this user or root, and none is writable by its group
    or every local user, except that a directory *above* may be world-writable with the sticky bit (like
    /tmp: only an entry's owner may replace it), and that whatever is on a read-only mount passes (a Kubernetes
    Secret volume: a read-only tmpfs, often 1777).  Otherwise another local user could put their key in.

    ``opened``: the stat of the descriptor the caller read, which must be the file checked here.
    """
    euid = os.geteuid()
    try:
        real = Path(os.path.realpath(path, strict=True))
        found = os.stat(real, follow_symlinks=False)
    except OSError as exc:
        raise KeyFileError(f"cannot read the {what} {path}: {exc.strerror}", "check the path and its permissions") from None
    if opened is not None and (opened.st_dev, opened.st_ino) != (found.st_dev, found.st_ino):
        raise KeyFileError(f"the {what} {path} changed while it was read", "someone may be replacing it; try again")
    shown = str(path) if real == Path(os.path.abspath(path)) else f"{path} (-> {real})"
    writable = not _read_only(real)  # a read-only mount (a Kubernetes Secret volume): nobody can replace what is on it
    if writable and found.st_uid not in (euid, 0):
        raise KeyFileError(f"the {what} {shown} belongs to another user (uid {found.st_uid}), who could replace it",
                           f"chown {_user(euid)} {real}, or use a copy of it that you own")
    if writable and found.st_mode & 0o022:
        raise KeyFileError(f"the {what} {shown} is writable by {_writers(found.st_mode)} "
                           f"(mode {stat.S_IMODE(found.st_mode):04o}), so others could replace it", f"chmod go-w {real}")
    for directory in real.parents:
        if _read_only(directory):
            continue
        try:
            above = os.stat(directory, follow_symlinks=False)
        except OSError as exc:
            raise KeyFileError(f"cannot check {directory}, above the {what} {path}: {exc.strerror}") from None
        if above.st_uid not in (euid, 0):
            raise KeyFileError(f"the directory {directory} above the {what} {shown} belongs to another user "
                               f"(uid {above.st_uid}), who could replace the key",
                               "keep keys in a directory that you or root own")
        if above.st_mode & 0o022 and not above.st_mode & stat.S_ISVTX:
            raise KeyFileError(f"the directory {directory} above the {what} {shown} is writable by "
                               f"{_writers(above.st_mode)} (mode {stat.S_IMODE(above.st_mode):04o}), so others could "
                               "replace the key", f"chmod go-w {directory}, or keep keys in a directory only you can write")


def _read_only(path: Path) -> bool:
    """``path`` is on a file system mounted read-only: nobody can add, replace or re-mode what is there."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def load_trust_dir(directory: str | Path) -> tuple[PublicKey, ...]:
    """Every ``*.pub`` / ``*.pem`` public key in ``directory`` (not its subdirectories); any may verify.

    A file that is not a public key is an error, not skipped: a trust directory says exactly whom
    the user trusts.  So is a directory or key file that another local user could change (:func:`refuse_replaceable`).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise KeyFileError(f"the trust directory {directory} does not exist or is not a directory")
    refuse_replaceable(directory, "trust directory")
    keys: list[PublicKey] = []
    for path in sorted(directory.iterdir()):
        if path.suffix.lower() not in KEY_SUFFIXES or path.name.startswith(".") or path.is_dir():
            continue
        keys.append(load_public_key(path))
    if not keys:
        raise KeyFileError(f"the trust directory {directory} holds no public key (*.pub or *.pem)",
                           "put the publishers' public keys there")
    return unique_keys(keys)


def unique_keys(keys: Iterable[PublicKey]) -> tuple[PublicKey, ...]:
    """The keys without repeats (the same key under two file names counts once), in order."""
    seen: dict[str, PublicKey] = {}
    for key in keys:
        seen.setdefault(key.fingerprint, key)
    return tuple(seen.values())


def trusted_keys(keys: Iterable[str | Path] = (), trust_dir: str | Path | None = None) -> tuple[PublicKey, ...]:
    """What ``--key KEY.pub`` (repeatable) and ``--trust-dir DIR`` name together."""
    found = [load_public_key(k) for k in keys]
    if trust_dir is not None:
        found += load_trust_dir(trust_dir)
    if not found:
        raise KeyFileError("no public key to verify with", "give --key KEY.pub or --trust-dir DIR")
    return unique_keys(found)


def verification_keys(key_files: Iterable[str | Path] = (), trust_dir: str | Path | None = None, *,
                      env_keys: Iterable[str | Path] = (), env_trust_dir: str | Path | None = None,
                      env_problem: str = "") -> tuple[PublicKey, ...] | None:
    """The keys a pull, export or the storage initializer must verify with, or None when it need not.

    The arguments (``--verify-key``, ``--trust-dir``) win over the environment (``$ORMB_VERIFY_KEY``,
    ``$ORMB_TRUST_DIR``, read by :func:`ormb.config.verification_environment`).  An environment that
    says "verify" but names no key (``env_problem``: set, but empty) is a :class:`UsageError`, never
    "no verification": it fails closed.
    """
    files = tuple(key_files)
    if files or trust_dir is not None:
        return trusted_keys(files, trust_dir)
    if env_problem:
        raise UsageError(f"{env_problem}, so there is no key to verify with",
                         "set it to the public key file(s) the model must be signed with, or unset it")
    env_files = tuple(env_keys)
    if not env_files and env_trust_dir is None:
        return None
    return trusted_keys(env_files, env_trust_dir)
