"""Performance benchmarks for mesh_client (issue 8). Run ``python -m benchmarks --help``.

A plain script package, not a test suite: it starts a lean backend, a real Envoy and a real
HAProxy on 127.0.0.1, runs each comparison with both sides alternating in the same process, prints
tables and writes JSON. See ``docs/performance.md``.
"""
