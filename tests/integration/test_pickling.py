"""Errors from real failed calls, and used sessions, survive ``pickle``: in this process and in a
spawned ``ProcessPoolExecutor`` worker (a fresh interpreter that imports the classes by name).
Real Envoy, HAProxy, backends, refused ports and a peer that hangs up."""

from __future__ import annotations

import multiprocessing
import pickle
import socketserver
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.request import getproxies

import httpx
import pytest
import requests
from thriftpy2.thrift import TApplicationException
from thriftpy2.transport import TTransportException

from mesh_client import (
    DeadlineExceeded,
    Mesh,
    MeshConnectError,
    MeshError,
    MeshTimeoutError,
    MeshTransportError,
    ThriftRoutingError,
    call_info,
)
from mesh_client.registry import load_mapping
from mesh_client.sidecar import free_port, start_envoy, start_haproxy
from mesh_client.testing import Backend
from mesh_client.testing.loopback import LoopbackServer

from . import pickling_worker
from .conftest import registry
from .pickling_worker import IDL, fail
from .servers import serve_thrift

pytestmark = pytest.mark.real


class _HangUp(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.recv(65536)  # the request (or its first bytes), then the connection closes


class Sleepy:
    def echo(self, token: str) -> str:
        return token

    def sleep(self, ms: int) -> None:
        threading.Event().wait(ms / 1000)


@dataclass
class PicklingWorld:
    registry: dict[str, Any]
    idl_path: str
    mesh: Mesh


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, backend: Backend, envoy_bin: str, haproxy_bin: str
) -> Iterator[PicklingWorld]:
    work = tmp_path_factory.mktemp("pickling")
    idl_path = work / "pickling_echo.thrift"
    idl_path.write_text(IDL)
    echo = pickling_worker.thriftpy2.load(str(idl_path), module_name="pickling_echo_thrift")
    echo_port = free_port()
    policy = {"timeout": 0.3, "retries": 0}
    thrift = {"protocol": "thrift", "transport": "framed", **policy}
    proxied = registry(backend, work / "no-flags.json", envoy_thrift=f"127.0.0.1:{free_port()}")
    proxied["flags"] = {"source": "none"}  # what the real Envoy and HAProxy serve:
    proxied["services"] = {
        "users": {**proxied["services"]["users"], **policy},
        "echo": {"haproxy": f"127.0.0.1:{free_port()}", "endpoints": [f"127.0.0.1:{echo_port}"], **thrift},
        "echo-dead": {"haproxy": f"127.0.0.1:{free_port()}", "endpoints": [f"127.0.0.1:{free_port()}"], **thrift},
    }
    config = load_mapping(proxied, source="pickling registry")
    hangup = LoopbackServer(_HangUp, name="hang-up")
    hangup_address = str(hangup.address)
    callers = {  # what the callers use: the above, plus ports that refuse or hang up
        **proxied,
        "services": {
            **proxied["services"],
            "refused": {"haproxy": f"127.0.0.1:{free_port()}", **policy},
            "hangup": {"haproxy": hangup_address, **policy},
            "echo-refused": {"haproxy": f"127.0.0.1:{free_port()}", **thrift},
            "echo-hangup": {"haproxy": hangup_address, **thrift},
        },
    }
    with ExitStack() as stack:
        stack.enter_context(hangup)
        serve_thrift(stack, echo.Echo, Sleepy(), stack.enter_context(Mesh(config)), "framed", echo_port)
        stack.enter_context(start_envoy(config, work / "envoy", binary=envoy_bin))
        stack.enter_context(start_haproxy(config, work / "haproxy", binary=haproxy_bin))
        mesh = stack.enter_context(Mesh.from_dict(callers))
        yield PicklingWorld(callers, str(idl_path), mesh)


@pytest.fixture(scope="module")
def spawned() -> Iterator[ProcessPoolExecutor]:
    """One worker in a fresh interpreter (spawn), for the whole module."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


#: (client, case) -> (mesh class, the client library's class, the static class's name)
EXPECTED: dict[tuple[str, str], tuple[type[MeshError], type[BaseException], str]] = {
    ("requests", "connect"): (MeshConnectError, requests.ConnectionError, "MeshConnectError_ConnectionError"),
    ("requests", "timeout"): (MeshTimeoutError, requests.Timeout, "MeshTimeoutError_ReadTimeout"),
    ("requests", "transport"): (MeshTransportError, requests.ConnectionError, "MeshTransportError_ConnectionError"),
    ("requests", "deadline"): (DeadlineExceeded, requests.Timeout, "DeadlineExceeded_Timeout"),
    ("httpx", "connect"): (MeshConnectError, httpx.ConnectError, "MeshConnectError_ConnectError"),
    ("httpx", "timeout"): (MeshTimeoutError, httpx.TimeoutException, "MeshTimeoutError_ReadTimeout"),
    ("httpx", "transport"): (MeshTransportError, httpx.RemoteProtocolError, "MeshTransportError_RemoteProtocolError"),
    ("httpx", "deadline"): (DeadlineExceeded, httpx.TimeoutException, "DeadlineExceeded_TimeoutException"),
    ("thrift", "connect"): (MeshConnectError, TTransportException, "MeshConnectError_TTransportException"),
    ("thrift", "timeout"): (MeshTimeoutError, TimeoutError, "MeshTimeoutError_TimeoutError"),
    ("thrift", "transport"): (MeshTransportError, TTransportException, "MeshTransportError_TTransportException"),
    ("thrift", "deadline"): (DeadlineExceeded, TimeoutError, "DeadlineExceeded_TimeoutError"),
    ("thrift", "routing"): (ThriftRoutingError, TApplicationException, "ThriftRoutingError_TApplicationException"),
}
for _case in ("connect", "timeout", "transport", "deadline"):
    EXPECTED["httpx-async", _case] = EXPECTED["httpx", _case]
CASES = sorted(EXPECTED)


def raised(world: PicklingWorld, kind: str, case: str) -> BaseException:
    with pytest.raises(Exception) as caught:  # noqa: PT011 - the class is what the test checks
        fail(world.registry, kind, case, world.idl_path)
    return caught.value


def check(err: BaseException, kind: str, case: str) -> None:
    """What a user relies on: both classes (the static one), the message and the call's info."""
    mesh_cls, native_cls, name = EXPECTED[kind, case]
    assert isinstance(err, mesh_cls)
    assert isinstance(err, native_cls)
    assert type(err).__qualname__ == name
    assert type(err).__module__ != "mesh_client.errors"  # (not a class built at run time)
    service = pickling_worker.SERVICES[case][1 if kind == "thrift" else 0]
    assert isinstance(err, MeshTransportError)
    assert err.info is not None
    assert err.info.service == service
    assert service in str(err)


def same(copy: BaseException, original: BaseException) -> None:
    assert type(copy) is type(original)
    assert str(copy) == str(original)
    assert copy.args == original.args
    assert isinstance(copy, MeshTransportError)
    assert isinstance(original, MeshTransportError)
    assert copy.info == original.info
    if isinstance(original, ThriftRoutingError):
        assert isinstance(copy, ThriftRoutingError)
        assert (copy.kind, copy.may_have_reached_server) == (original.kind, original.may_have_reached_server)


@pytest.mark.parametrize(("kind", "case"), CASES)
def test_an_error_from_a_failed_call_survives_a_pickle_round_trip(world: PicklingWorld, kind: str, case: str) -> None:
    err = raised(world, kind, case)
    check(err, kind, case)
    copy = pickle.loads(pickle.dumps(err))
    check(copy, kind, case)
    same(copy, err)
    if kind == "requests":  # the request requests attached travels (it pickles)
        assert isinstance(copy.request, requests.PreparedRequest)  # type: ignore[attr-defined]
        assert copy.request.url == err.request.url  # type: ignore[attr-defined]
    if kind.startswith("httpx"):
        assert copy.request.url == err.request.url  # type: ignore[attr-defined]


@pytest.mark.parametrize(("kind", "case"), CASES)
def test_an_error_raised_in_a_spawned_worker_arrives_whole(
    world: PicklingWorld, spawned: ProcessPoolExecutor, kind: str, case: str
) -> None:
    err = spawned.submit(fail, world.registry, kind, case, world.idl_path).exception(timeout=60)
    assert err is not None
    check(err, kind, case)
    here = raised(world, kind, case)
    assert type(err) is type(here)
    assert isinstance(err, MeshTransportError)
    assert isinstance(here, MeshTransportError)
    assert err.info is not None
    assert here.info is not None
    assert (err.info.route, err.info.attempts) == (here.info.route, here.info.attempts)


def test_an_unpicklable_request_does_not_stop_the_error_from_travelling(world: PicklingWorld) -> None:
    """A request whose body is a generator cannot be pickled: the error travels without it."""
    session = world.mesh.requests_session()
    with pytest.raises(MeshConnectError) as caught:
        session.post("http://refused/echo", data=(chunk for chunk in [b"a", b"b"]))
    with pytest.raises(TypeError):
        pickle.dumps(caught.value.request)  # type: ignore[attr-defined]
    copy = pickle.loads(pickle.dumps(caught.value))
    assert type(copy) is type(caught.value)
    assert copy.request is None
    assert copy.info == caught.value.info


def test_a_used_session_unpickles_into_a_working_one_bound_to_the_same_mesh(world: PicklingWorld) -> None:
    session = world.mesh.requests_session()
    session.headers["x-team"] = "payments"
    session.cookies.set("sid", "s1")
    assert session.get("http://users/echo").status_code == 200  # (its pool holds a connection)

    copy = pickle.loads(pickle.dumps(session))

    assert copy.mesh is world.mesh  # the open Mesh of that registry, in this process
    token = uuid.uuid4().hex
    reply = pickling_worker.call_with(copy, token)
    assert reply["route"] == "haproxy"
    assert reply["headers"]["x-token"] == token
    assert reply["headers"]["x-team"] == "payments"
    assert reply["headers"]["cookie"] == "sid=s1"
    copy.close()


def test_a_session_unpickled_in_a_fresh_process_is_bound_to_a_mesh_built_from_its_registry(
    world: PicklingWorld, spawned: ProcessPoolExecutor
) -> None:
    session = world.mesh.requests_session()
    session.headers["x-team"] = "payments"
    session.get("http://users/echo")
    token = uuid.uuid4().hex
    reply = spawned.submit(pickling_worker.call_with, session, token).result(timeout=60)
    assert reply["route"] == "haproxy"
    assert (reply["headers"]["x-token"], reply["headers"]["x-team"]) == (token, "payments")
    # every session unpickled in that process shares the one Mesh it built
    first = spawned.submit(pickling_worker.bound_mesh, session).result(timeout=60)
    second = spawned.submit(pickling_worker.bound_mesh, world.mesh.requests_session()).result(timeout=60)
    assert first == second
    assert first[1:] == (True, world.mesh.config.source)


def test_requests_own_session_pickling_test_passes_with_a_mesh_session(world: PicklingWorld, backend: Backend) -> None:
    """requests' ``test_session_pickling``, with the session a mesh one and a plain URL."""
    r = requests.Request("GET", f"http://{backend.address}/get")
    s = world.mesh.requests_session()
    s = pickle.loads(pickle.dumps(s))
    s.proxies = getproxies()
    r = s.send(r.prepare())
    assert r.status_code == 200
    assert call_info(r) is None  # (not a mesh call)
    s.close()


def test_a_mesh_closed_since_is_not_what_a_session_is_bound_to(world: PicklingWorld, tmp_path: Path) -> None:
    registry = {**world.registry, "mesh": {**world.registry["mesh"], "caller": "billing"}}
    with Mesh.from_dict(registry) as mesh:
        pickled = pickle.dumps(mesh.requests_session())
    copy = pickle.loads(pickled)
    assert copy.mesh is not mesh
    assert not copy.mesh.closed
    assert copy.mesh.config == mesh.config
    assert copy.get("http://users/echo").status_code == 200
    assert pickle.loads(pickle.dumps(copy)).mesh is copy.mesh  # (later ones share it)
    copy.close()
