"""Providers: one package per provider type, behind one small protocol (`base.ProviderAdapter`).

Each package holds `schema.py` (its manifests' `model`/`training` schemas and its type record,
listed in `catalog.py`) and `adapter.py` (the code that talks to its API through `http.py`, the
only module that imports an HTTP client). Validating manifests imports schemas, never an adapter.
"""
