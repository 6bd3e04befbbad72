"""Where ormb keeps its state and which registry a bare reference means."""

from __future__ import annotations

import os
from collections.abc import Mapping
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
    verify_env_problem: str = ""  # why $ORMB_VERIFY_KEY/$ORMB_TRUST_DIR cannot be used (set, but empty): fail closed

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
    keys, trust_dir, problem = verification_environment(os.environ)
    return Settings(home=home, default_registry=registry or DEFAULT_REGISTRY, verify_keys=keys, trust_dir=trust_dir,
                    verify_env_problem=problem)


def verification_environment(environ: Mapping[str, str]) -> tuple[tuple[Path, ...], Path | None, str]:
    """``$ORMB_VERIFY_KEY`` (':'-separated key files) and ``$ORMB_TRUST_DIR``, and what is wrong with them.

    A variable that is set means "verify": set but empty, blank, or with an empty entry (``a.pub:``) it
    cannot name a key, and the problem is returned so that the command refuses (exit 2) instead of
    running without verification (a deployment whose secret did not fill in must not fail open).
    """
    problems = []
    keys: list[Path] = []
    raw_keys = environ.get(VERIFY_KEY_ENV)
    if raw_keys is not None:
        entries = raw_keys.split(os.pathsep)
        if any(not entry.strip() for entry in entries):
            problems.append(f"{VERIFY_KEY_ENV} is set but {'empty' if not raw_keys.strip() else 'has an empty entry'} "
                            f"({raw_keys!r})")
        keys = [Path(entry).expanduser() for entry in entries if entry.strip()]
    raw_dir = environ.get(TRUST_DIR_ENV)
    trust_dir = None
    if raw_dir is not None:
        if not raw_dir.strip():
            problems.append(f"{TRUST_DIR_ENV} is set but empty ({raw_dir!r})")
        else:
            trust_dir = Path(raw_dir).expanduser()
    return tuple(keys), trust_dir, "; ".join(problems)
