"""The ``ormb`` command line: thin commands over :mod:`ormb.api`."""
