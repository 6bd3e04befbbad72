"""The embedded registry (``ormb registry serve``): OCI distribution v1.1, auth, a model catalog."""
