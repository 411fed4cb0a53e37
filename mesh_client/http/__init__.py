"""Drop-in HTTP wrappers: thin shells around :mod:`mesh_client.core`.

- :mod:`mesh_client.http.requests`: ``MeshSession`` (a ``requests.Session``) and ``MeshAdapter``.
- :mod:`mesh_client.http.httpx`: ``MeshTransport`` and ``AsyncMeshTransport``.
"""
