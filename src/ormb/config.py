"""Where ormb keeps its state and which registry a bare reference means."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ormb.errors import StorageError

DEFAULT_REGISTRY = "localhost:5000"
VERIFY_KEY_ENV = "ORMB_VERIFY_KEY"  # public key file(s), separated by ':', that pull and export require
TRUST_DIR_ENV = "ORMB_TRUST_DIR"  # a directory of public keys, any of which pull and export accept


@dataclass(frozen=True)
class Settings:
    """Resolved settings; build one with :func:`load_settings`.

    ``verify_keys``/``trust_dir`` (from ``$ORMB_VERIFY_KEY``/``$ORMB_TRUST_DIR``): when either is set,
    pull, export and the storage initializer refuse a model not signed by one of those keys.
    """

    home: Path
    default_registry: str
    verify_keys: tuple[Path, ...] = ()
    trust_dir: Path | None = None

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"


def ormb_home() -> Path:
    return Path(os.environ.get("ORMB_HOME") or Path.home() / ".ormb").expanduser()


def load_settings(home: Path | None = None) -> Settings:
    """``ORMB_REGISTRY``, else ``registry`` in ``$ORMB_HOME/config.yaml``, else ``localhost:5000``."""
    home = home or ormb_home()
    registry = os.environ.get("ORMB_REGISTRY")
    config_file = home / "config.yaml"
    if not registry:
        import yaml  # here, not at the top: commands that need no settings (--help) start faster

        try:
            data = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            data = {}
        except OSError as exc:
            raise StorageError(f"cannot read {config_file}: {exc.strerror or exc}", "check its permissions") from None
        except (yaml.YAMLError, RecursionError) as exc:
            raise StorageError(f"cannot read {config_file}: {exc}", "fix or remove the file") from None
        if not isinstance(data, dict):
            raise StorageError(f"{config_file} is not a YAML mapping", "write e.g. 'registry: localhost:5000'")
        value = data.get("registry")
        if value is not None and not isinstance(value, str):
            raise StorageError(f"'registry' in {config_file} is not a string", "write e.g. 'registry: localhost:5000'")
        registry = value
    keys = tuple(Path(p).expanduser() for p in os.environ.get(VERIFY_KEY_ENV, "").split(os.pathsep) if p)
    trust_dir = os.environ.get(TRUST_DIR_ENV)
    return Settings(home=home, default_registry=registry or DEFAULT_REGISTRY, verify_keys=keys,
                    trust_dir=Path(trust_dir).expanduser() if trust_dir else None)
