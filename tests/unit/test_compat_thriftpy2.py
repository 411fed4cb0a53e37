"""The thriftpy2 seams (``mesh_client._compat.thriftpy2``): each probe and each fallback, in
whichever mode this process runs (``MESH_CLIENT_COMPAT_FALLBACK=1`` or not); the forced check of every
seam at once is in ``test_compat.py``."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import thriftpy2.thrift
import thriftpy2.transport

from mesh_client._compat import forced_fallback
from mesh_client._compat import thriftpy2 as tp
from mesh_client.thrift import pool

# -- thriftpy2: each seam's fast path and fallback, in whichever mode this process runs ----------


def test_the_thriftpy2_probes_pass_on_this_thriftpy2_unless_forced() -> None:
    passing = not forced_fallback()
    assert (tp._probe_args_to_kwargs() is thriftpy2.thrift.args_to_kwargs) == passing
    assert tp._probe_memory_clean() == passing
    assert tp._probe_buffered_clean() == passing


class Inner(tp._Chunks):
    """The transport under a buffered one: reads come in the given chunks, writes are kept."""

    written = b""

    def write(self, data: bytes) -> None:
        self.written += bytes(data)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("probed", [True, False], ids=["clean", "constructor again"])
def test_a_buffered_transport_is_emptied_either_way(probed: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tp, "_BUFFERED_CLEAN", probed)
    inner = Inner(b"abcd", b"wxyz")
    trans: Any = thriftpy2.transport.TBufferedTransport(inner)
    assert bytes(trans.read(1)) == b"a"
    trans.write(b"unsent")
    tp.clear_buffered(trans, inner)
    assert bytes(trans.read(2)) == b"wx"  # not the rest of the first chunk
    trans.write(b"reply")
    trans.flush()
    assert inner.written == b"reply"  # not what was dropped


@pytest.mark.parametrize("probed", [True, False], ids=["clean", "constructor again"])
def test_a_buffered_cleaner_empties_its_transport_either_way(probed: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tp, "_BUFFERED_CLEAN", probed)
    inner = Inner(b"abcd", b"wxyz", b"1234")
    trans: Any = thriftpy2.transport.TBufferedTransport(inner)
    clean = tp.buffered_cleaner(trans, inner)
    for expected in (b"wx", b"12"):  # the same cleaner, used again
        assert bytes(trans.read(1)) in (b"a", b"y")
        trans.write(b"unsent")
        clean()
        assert bytes(trans.read(2)) == expected  # not the rest of the chunk before
    trans.write(b"reply")
    trans.flush()
    assert inner.written == b"reply"  # not what was dropped


@pytest.mark.parametrize("reusable", [True, False], ids=["clean", "new buffer"])
def test_the_thrift_client_writes_each_call_into_an_empty_buffer(
    reusable: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool, "_REUSABLE_BUFFER", reusable)
    left, right = socket.socketpair()
    try:
        conn = pool.Connection(left, None)  # type: ignore[arg-type]
        first, proto = conn.writer()
        proto.write_message_begin("a", 1, 1)
        assert bytes(first.getvalue())
        second, _ = conn.writer()
        assert bytes(second.getvalue()) == b""
        assert (second is first) == reusable
    finally:
        left.close()
        right.close()
