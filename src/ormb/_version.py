"""ormb's version, in a module of its own: the package, the CLI and the User-Agent read it from here."""

__version__ = "0.1.0"
