"""What the CLI needs of signing before a command runs (option choices, the password variable), without
importing cryptography: ``ormb --help`` stays light (tests/e2e/test_startup_imports.py)."""

from __future__ import annotations

PASSWORD_ENV = "ORMB_KEY_PASSWORD"
ALGORITHMS = ("ecdsa-p256", "ecdsa-p384", "ecdsa-p521", "ed25519")  # ormb.signing.keys makes a key of each
