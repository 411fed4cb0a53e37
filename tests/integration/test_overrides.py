"""Routing overrides through the real mesh: A -> B -> C, where C (HTTP), CT (Thrift, THeader) and
CF (Thrift, framed) each have a main and a canary deployment behind real Envoy and HAProxy.

A (WSGI) calls B with the client kind under test; B (ASGI, uvicorn) calls C with the same kind
and CT and CF with the Thrift client; C, CT and CF report which deployment answered and which
overrides reached them. An override set in A's code, or sent to A by a trusted caller, must reach
the variants three hops down on both routes; without one, every call stays on main; an override
A does not trust is dropped at A.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import pytest
import requests
import thriftpy2

import mesh_client
from mesh_client import Mesh, call_info, current_overrides, route_overrides
from mesh_client.overrides import OVERRIDE_HEADER, OVERRIDE_SIGNATURE_HEADER, parse_override_header, sign_overrides
from mesh_client.registry import load_mapping
from mesh_client.sidecar import free_port, start_envoy, start_haproxy

from .servers import serve_asgi, serve_thrift, serve_wsgi

pytestmark = pytest.mark.real

KINDS = ("requests", "httpx", "httpx-async")
ROUTES = ("envoy", "haproxy")
SECRET_ENV = "IT_MESH_OVERRIDE_SECRET"
KEY = "integration-override-key-0123456789"
IDL = "service Who { string who() }\n"


class Chain:
    """The running chain: its meshes (per route and caller), clients, and A's address."""

    def __init__(self, who: Any) -> None:
        self.who = who
        self.meshes: dict[tuple[str, str], Mesh] = {}
        self.clients: dict[tuple[str, str, str], Any] = {}
        self.lock = threading.Lock()
        self.a = ""
        self.registry = Path()

    def client(self, route: str, caller: str, kind: str) -> Any:
        key = (route, caller, kind)
        with self.lock:
            if key not in self.clients:
                mesh = self.meshes[(route, caller)]
                if kind == "requests":
                    self.clients[key] = mesh.requests_session()
                elif kind == "httpx":
                    self.clients[key] = mesh.httpx_client()
                else:
                    self.clients[key] = mesh.httpx_async_client()
            return self.clients[key]

    def thrift(self, route: str, service: str) -> Any:
        key = (route, "b", service)
        with self.lock:
            if key not in self.clients:
                self.clients[key] = self.meshes[(route, "b")].thrift_client(self.who.Who, service)
            return self.clients[key]


def info_of(r: Any) -> dict[str, Any]:
    info = call_info(r)
    assert info is not None
    return {"route": info.route.value, "variant": info.variant, "reason": info.route_reason}


def answer(r: Any) -> dict[str, Any]:
    return {"status": r.status_code, "body": r.json(), "info": info_of(r)}


def json_response(start_response: Any, body: dict[str, Any]) -> list[bytes]:
    payload = json.dumps(body).encode()
    start_response("200 OK", [("content-type", "application/json"), ("content-length", str(len(payload)))])
    return [payload]


def make_a(chain: Chain) -> Any:
    """Calls B with the query's route and kind, under the query's override (set in code) if any."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        route, kind = query["route"], query["kind"]
        url = f"http://b/b?{urlencode({'route': route, 'kind': kind})}"
        arrived = current_overrides()

        def call() -> dict[str, Any]:
            if kind != "httpx-async":
                return answer(chain.client(route, "a", kind).get(url))

            async def fetch() -> dict[str, Any]:  # (asyncio.run copies the context into its task)
                async with chain.meshes[(route, "a")].httpx_async_client() as client:
                    return answer(await client.get(url))

            return asyncio.run(fetch())

        if "override" in query:
            with route_overrides(parse_override_header(query["override"])):
                b = call()
        else:
            b = call()
        return json_response(start_response, {"arrived": arrived, "b": b})

    return app


def make_b(chain: Chain) -> Any:
    """Calls C (HTTP) with the same route and kind, then CT and CF (Thrift) from a thread."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        query = {k: v[-1] for k, v in parse_qs(scope["query_string"].decode()).items()}
        route, kind = query["route"], query["kind"]
        client = chain.client(route, "b", kind)
        if kind == "httpx-async":
            c = answer(await client.get("http://c/c"))
        else:  # a thread started by to_thread runs in a copy of this context: the overrides go along
            c = answer(await asyncio.to_thread(client.get, "http://c/c"))
        thrift = {name: json.loads(await asyncio.to_thread(chain.thrift(route, name).who)) for name in ("ct", "cf")}
        body = json.dumps({"overrides": current_overrides(), "c": c, **thrift}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    return app


def make_c(deployment: str) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        return json_response(
            start_response,
            {
                "deployment": deployment,
                "overrides": current_overrides(),
                "override_header": environ.get("HTTP_X_MESH_OVERRIDE"),
                "signature_header": environ.get("HTTP_X_MESH_OVERRIDE_SIGNATURE"),
            },
        )

    return app


class WhoHandler:
    def __init__(self, deployment: str) -> None:
        self.deployment = deployment

    def who(self) -> str:
        return json.dumps({"deployment": self.deployment, "overrides": current_overrides()})


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, envoy_bin: str, haproxy_bin: str) -> Iterator[Chain]:
    work: Path = tmp_path_factory.mktemp("overrides")
    (work / "who.thrift").write_text(IDL)
    chain = Chain(thriftpy2.load(str(work / "who.thrift"), module_name="overrides_who_thrift"))
    with ExitStack() as stack, pytest.MonkeyPatch.context() as env:
        env.setenv(SECRET_ENV, KEY)
        wrapped: dict[str, Any] = {}

        def late(name: str) -> Any:
            def wsgi(environ: Any, start_response: Any) -> Any:
                door = environ["PATH_INFO"].split("/")[1] if name == "a" else name
                return wrapped[door](environ, start_response)

            async def asgi(scope: Any, receive: Any, send: Any) -> None:
                await wrapped[name](scope, receive, send)

            return asgi if name == "b" else wsgi

        addresses = {name: stack.enter_context(serve_wsgi(late(name))) for name in ("a", "c", "c-canary", "c-preview")}
        addresses["b"] = stack.enter_context(serve_asgi(late("b"), free_port()))
        for name in ("ct", "ct-canary", "cf", "cf-canary"):
            addresses[name] = f"127.0.0.1:{free_port()}"  # type: ignore[assignment]

        def port() -> str:
            return f"127.0.0.1:{free_port()}"

        base: dict[str, Any] = {
            "mesh": {
                "caller": "a",
                "envoy_http": port(),
                "envoy_thrift": port(),
                "envoy_admin": port(),
            },
            "services": {
                "b": {"haproxy": port(), "endpoints": [str(addresses["b"])], "timeout": 5.0},
                "c": {
                    "haproxy": port(),
                    "endpoints": [str(addresses["c"])],
                    "timeout": 5.0,
                    "variants": {
                        "canary": {"haproxy": port(), "endpoints": [str(addresses["c-canary"])]},
                        "preview": {"endpoints": [str(addresses["c-preview"])]},  # no HAProxy port
                    },
                },
                "ct": {
                    "protocol": "thrift",
                    "transport": "header",
                    "haproxy": port(),
                    "endpoints": [str(addresses["ct"])],
                    "timeout": 5.0,
                    "variants": {"canary": {"haproxy": port(), "endpoints": [str(addresses["ct-canary"])]}},
                },
                "cf": {
                    "protocol": "thrift",
                    "haproxy": port(),
                    "endpoints": [str(addresses["cf"])],
                    "timeout": 5.0,
                    "variants": {"canary": {"endpoints": [str(addresses["cf-canary"])]}},  # via Envoy only
                },
            },
        }
        config = load_mapping(base)
        stack.enter_context(start_envoy(config, work / "envoy", binary=envoy_bin))
        stack.enter_context(start_haproxy(config, work / "haproxy", binary=haproxy_bin))

        def mesh(caller: str, route: str = "envoy", **overrides: Any) -> Mesh:
            data = {**base, "mesh": {**base["mesh"], "caller": caller, "default_route": route}}
            return stack.enter_context(Mesh.from_dict({**data, "overrides": overrides}))

        for route in ROUTES:
            chain.meshes[(route, "a")] = mesh("a", route)
            chain.meshes[(route, "b")] = mesh("b", route, accept_inbound=True)
        trusting = mesh("c", accept_inbound=True)
        doors = {
            "closed": mesh("a"),
            "open": mesh("a", accept_inbound=True),
            "signed": mesh("a", accept_inbound=True, secret_env=SECRET_ENV),
        }
        for door, door_mesh in doors.items():
            wrapped[door] = mesh_client.wsgi.MeshMiddleware(make_a(chain), door_mesh)
        wrapped["b"] = mesh_client.asgi.MeshMiddleware(make_b(chain), chain.meshes[("envoy", "b")])
        for name in ("c", "c-canary", "c-preview"):
            wrapped[name] = mesh_client.wsgi.MeshMiddleware(
                make_c(name.removeprefix("c-") if "-" in name else "main"), trusting
            )
        for name in ("ct", "ct-canary", "cf", "cf-canary"):
            deployment = "main" if "-" not in name else name.split("-")[1]
            transport = "header" if name.startswith("ct") else "framed"
            port_number = int(str(addresses[name]).rpartition(":")[2])
            serve_thrift(stack, chain.who.Who, WhoHandler(deployment), trusting, transport, port_number)
        chain.a = str(addresses["a"])
        chain.registry = write_toml(work / "mesh.toml", base)
        try:
            yield chain
        finally:
            for client in chain.clients.values():
                if hasattr(client, "aclose"):
                    continue  # (bound to uvicorn's loop, which has stopped: its pool goes with it)
                client.close()


def toml_lines(table: dict[str, Any], name: str = "") -> list[str]:
    """``table`` as TOML (values: strings, numbers, booleans and lists of them, which JSON spells alike)."""
    lines = [f"[{name}]"] if name else []
    lines += [f"{k} = {json.dumps(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for key, sub in table.items():
        if isinstance(sub, dict):
            lines += ["", *toml_lines(sub, f"{name}.{key}" if name else key)]
    return lines


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text("\n".join(toml_lines(data)) + "\n")
    return path


def call_a(chain: Chain, door: str, route: str, kind: str, headers: dict[str, str] | None = None, **query: str) -> Any:
    url = f"http://{chain.a}/{door}/a?{urlencode({'route': route, 'kind': kind, **query})}"
    r = requests.get(url, headers=headers or {}, timeout=20)
    assert r.status_code == 200, r.text
    return r.json()


def deployments(a: dict[str, Any]) -> dict[str, str]:
    b = a["b"]["body"]
    return {"c": b["c"]["body"]["deployment"], "ct": b["ct"]["deployment"], "cf": b["cf"]["deployment"]}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("route", ROUTES)
def test_an_override_set_in_a_reaches_the_canaries_three_hops_down(chain: Chain, route: str, kind: str) -> None:
    a = call_a(chain, "closed", route, kind, override="c=canary;ct=canary;cf=canary")
    assert deployments(a) == {"c": "canary", "ct": "canary", "cf": "canary"}
    b = a["b"]["body"]
    expected = {"c": "canary", "ct": "canary", "cf": "canary"}
    assert b["overrides"] == b["c"]["body"]["overrides"] == b["ct"]["overrides"] == expected
    assert b["cf"]["overrides"] == {}  # framed Thrift has no headers: routed to the variant, not carried on
    assert b["c"]["body"]["override_header"] == "c=canary;ct=canary;cf=canary"
    # A -> B: B has no variant; B -> C: the canary, on the flag's route
    assert a["b"]["info"] == {**a["b"]["info"], "route": route, "variant": None}
    assert b["c"]["info"]["route"] == route
    assert b["c"]["info"]["variant"] == "canary"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("route", ROUTES)
def test_without_an_override_every_call_stays_on_main(chain: Chain, route: str, kind: str) -> None:
    a = call_a(chain, "closed", route, kind)
    assert deployments(a) == {"c": "main", "ct": "main", "cf": "main"}
    b = a["b"]["body"]
    assert b["overrides"] == b["c"]["body"]["overrides"] == {}
    assert b["c"]["body"]["override_header"] is None
    assert b["c"]["info"]["variant"] is None


def test_a_variant_without_a_haproxy_port_is_reached_via_envoy(chain: Chain) -> None:
    a = call_a(chain, "closed", "haproxy", "requests", override="c=preview")
    c = a["b"]["body"]["c"]
    assert c["body"]["deployment"] == "preview"
    assert c["info"]["route"] == "envoy"
    assert c["info"]["variant"] == "preview"
    assert "the variant has no HAProxy port" in c["info"]["reason"]


@pytest.mark.parametrize("route", ROUTES)
def test_an_undeclared_variant_goes_to_main_and_is_carried_on(chain: Chain, route: str) -> None:
    a = call_a(chain, "closed", route, "httpx", override="c=nightly;zz=pr-1")
    assert deployments(a) == {"c": "main", "ct": "main", "cf": "main"}
    c = a["b"]["body"]["c"]
    assert c["status"] == 200
    assert c["info"]["variant"] is None
    assert c["body"]["overrides"] == {"c": "nightly", "zz": "pr-1"}


def inbound(route: str = "envoy") -> tuple[str, str]:
    return route, "requests"


def test_an_inbound_override_is_dropped_where_accept_inbound_is_false(chain: Chain) -> None:
    a = call_a(chain, "closed", *inbound(), headers={OVERRIDE_HEADER: "c=canary"})
    assert a["arrived"] == {}
    assert deployments(a) == {"c": "main", "ct": "main", "cf": "main"}
    assert a["b"]["body"]["c"]["body"]["override_header"] is None


@pytest.mark.parametrize("route", ROUTES)
def test_a_trusted_inbound_override_is_carried_to_the_canary(chain: Chain, route: str) -> None:
    a = call_a(chain, "open", *inbound(route), headers={OVERRIDE_HEADER: "c=canary"})
    assert a["arrived"] == {"c": "canary"}
    assert deployments(a)["c"] == "canary"


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({OVERRIDE_HEADER: "c=canary"}, id="missing"),
        pytest.param(
            {**sign_overrides({"c": "canary"}, "some-other-key-0123456789"), OVERRIDE_HEADER: "c=canary"},
            id="wrong-key",
        ),
        pytest.param({**sign_overrides({"c": "main"}, KEY), OVERRIDE_HEADER: "c=canary"}, id="other-value"),
        pytest.param(sign_overrides({"c": "canary"}, KEY, ttl=10, now=1_600_000_000), id="expired"),
    ],
)
def test_where_signatures_are_required_a_missing_wrong_or_expired_one_is_dropped(
    chain: Chain, headers: dict[str, str]
) -> None:
    a = call_a(chain, "signed", *inbound(), headers=headers)
    assert a["arrived"] == {}
    assert deployments(a) == {"c": "main", "ct": "main", "cf": "main"}


@pytest.mark.parametrize("route", ROUTES)
def test_a_validly_signed_override_is_honoured_and_its_signature_carried_on(chain: Chain, route: str) -> None:
    headers = sign_overrides({"c": "canary"}, KEY, ttl=60)
    a = call_a(chain, "signed", *inbound(route), headers=headers)
    assert a["arrived"] == {"c": "canary"}
    c = a["b"]["body"]["c"]["body"]
    assert c["deployment"] == "canary"
    assert (c["override_header"], c["signature_header"]) == (
        headers[OVERRIDE_HEADER],
        headers[OVERRIDE_SIGNATURE_HEADER],
    )


def test_doctor_finds_the_variant_routes_in_the_running_envoy(chain: Chain) -> None:
    from mesh_client.cli.doctor import diagnose

    (check,) = [c for c in diagnose(chain.registry, timeout=2.0) if c.name == "envoy variants"]
    assert (check.verdict, check.detail) == (
        "OK",
        "x-mesh-variant routed ahead of the default route for c:canary, c:preview",
    )
