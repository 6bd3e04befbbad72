"""One error tree for ormb.  Every error says what went wrong and what to do.

::

    OrmbError                       base; ``str(err)`` is "<what> (<what to do>)"
    ├── UsageError                  (ValueError)   a command or function used wrongly (an option that does not apply)
    ├── InvalidReferenceError       (ValueError)   a reference that does not parse
    ├── MetadataError               (ValueError)   ormbfile.yaml is malformed or invalid
    ├── ModelFormatError            (ValueError)   model/ does not hold what its format needs
    ├── NotFoundError               (LookupError)  a reference, tag or blob that is not there
    ├── InvalidArtifactError        (ValueError)   a manifest or config that is not a model ormb can read
    ├── IntegrityError              (ValueError)   content whose digest or size is not what was promised
    ├── UnsafeArchiveError          (ValueError)   a layer that would write outside the export directory
    ├── VerificationError           (ValueError)   a model whose signature is missing, untrusted, invalid, or not its content
    ├── KeyFileError                (ValueError)   a signing or public key file ormb cannot use
    ├── StorageError                (OSError)      the local cache or a target directory cannot be used
    ├── AuthenticationError         (PermissionError)  the registry rejected the credentials (401)
    ├── PermissionDeniedError       (PermissionError)  the credentials are valid but not allowed this (403)
    ├── RegistryError               (RuntimeError) the registry answered with an error ormb cannot fix
    └── NetworkError                (ConnectionError)  the registry cannot be reached, or TLS failed

Each class carries an ``exit_code`` so the CLI can return something a script can act on.
"""

from __future__ import annotations


class OrmbError(Exception):
    """Base of every error ormb raises on purpose."""

    exit_code = 1
    default_hint = ""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = self.default_hint if hint is None else hint
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(OrmbError, ValueError):
    """A command used wrongly: an option that does not apply to what it was given."""

    exit_code = 2
    default_hint = "see the command's --help"


class InvalidReferenceError(OrmbError, ValueError):
    exit_code = 2
    default_hint = "use the form [host[:port]/]repository[:tag][@sha256:digest], e.g. localhost:5000/team/model:v1"


class MetadataError(OrmbError, ValueError):
    exit_code = 2
    default_hint = "fix ormbfile.yaml; see the README section 'ormbfile.yaml'"


class ModelFormatError(OrmbError, ValueError):
    exit_code = 2
    default_hint = "put the model files under model/ or set the right 'format' in ormbfile.yaml"


class NotFoundError(OrmbError, LookupError):
    exit_code = 3
    default_hint = "run 'ormb models' to see what the local cache holds"


class InvalidArtifactError(OrmbError, ValueError):
    exit_code = 4
    default_hint = "the artifact was not made by ormb or a compatible tool"


class IntegrityError(OrmbError, ValueError):
    exit_code = 4
    default_hint = "the content is corrupt; fetch it again"


class UnsafeArchiveError(OrmbError, ValueError):
    exit_code = 4
    default_hint = "the model layer is malicious or corrupt; nothing was written"


class VerificationError(OrmbError, ValueError):
    exit_code = 4
    default_hint = "do not use this model; ask its publisher for a model signed by a key you trust"


class KeyFileError(OrmbError, ValueError):
    exit_code = 2
    default_hint = "give a PEM key: ECDSA P-256/P-384/P-521 or Ed25519 (openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256)"


class StorageError(OrmbError, OSError):
    exit_code = 1
    default_hint = "check the path, its permissions and free disk space"


class AuthenticationError(OrmbError, PermissionError):
    exit_code = 5


class PermissionDeniedError(OrmbError, PermissionError):
    exit_code = 5
    default_hint = "ask the registry's administrator for access, or log in as a user who has it"


class RegistryError(OrmbError, RuntimeError):
    exit_code = 6
    default_hint = "see the registry's message; retry later if it is a server error"


class NetworkError(OrmbError, ConnectionError):
    exit_code = 6
    default_hint = "check the host name, that the registry is running, and your network or proxy settings"
