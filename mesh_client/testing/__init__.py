"""Test helpers for code that calls services through the mesh."""

from .backend import Backend, Record

__all__ = ["Backend", "Record"]
