"""The embedded registry (``ormb registry serve``): OCI distribution v1.1, auth, a model catalog.

Read in this order (docs/architecture.md has the why):

- ``app.py``: ``create_app(storage, access)``, the WSGI application: routing, errors, access log;
- ``http.py``: requests, responses, the spec's errors; ``browser.py``: Host and Origin checks (DNS
  rebinding, cross-site requests); ``authz.py``: the one authorisation decision;
- ``handlers/``: one module per resource; ``validate.py``: manifest checks; ``pages.py``: the web catalog,
  with ``model_files.py`` (what it reads of a model's layers), ``modelcard.py`` (the README as sanitised
  Markdown) and ``names.py`` (the name the registry announces and the catalog copies);
- ``storage_api.py``: what handlers need from storage; ``store.py``: files + SQLite, gc, check;
- ``access.py``: users, policy, tokens (revocable); ``throttle.py``: failed logins, 429;
- ``serve.py``: gunicorn, and ``RegistryServer`` for Python.
"""
