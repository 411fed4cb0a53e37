"""Shadow reads on ``fake_mesh``: stages in the route flag, which calls are copied and how, what the
comparison finds, and where it is reported. (Real Envoy and HAProxy: tests/integration/test_shadow.py.)"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from mesh_client import Mesh, MeshConnectError, Route, call_info, call_options, deadline
from mesh_client.context import begin_request
from mesh_client.registry import load_mapping
from mesh_client.routing import make_router
from mesh_client.shadow import SHADOW_HEADER
from mesh_client.shadow.report import LOG_BURST, MAX_LOG_CHARS
from mesh_client.testing import FakeMesh, MeshFlags, UpstreamRequest, reply

from ..conftest import Otel, load_idl

SHADOWED = {"sample": 1.0, "max_in_flight": 4, "ignore_json": ["generated_at"], "compare_headers": ["etag"]}
REGISTRY: dict[str, Any] = {
    "mesh": {"caller": "checkout", "envoy_http": "127.0.0.1:15001", "envoy_thrift": "127.0.0.1:15002"},
    "flags": {"source": "none"},
    "services": {
        "users": {
            "haproxy": "127.0.0.1:16001",
            "timeout": 2.0,
            "retries": 2,
            "retry_on": ["gateway-error", "connect-failure"],
            "shadow": SHADOWED,
        },
        "sampled": {"haproxy": "127.0.0.1:16002", "shadow": {"sample": 0.3, "max_in_flight": 1024}},
        "users-thrift": {
            "protocol": "thrift",
            "haproxy": "127.0.0.1:16003",
            "idempotent_methods": ["get"],
            "shadow": {"sample": 1.0},
        },
    },
}


@pytest.fixture
def mesh(fake_mesh: FakeMesh, mesh_flags: MeshFlags) -> Mesh:
    for service in REGISTRY["services"]:
        mesh_flags.stage(service, "shadow")
    return fake_mesh.mesh(REGISTRY)


def by_route(request: UpstreamRequest) -> Any:
    """The same answer on both routes, except a volatile member and, on /planted, the route."""
    body = {"path": request.path, "generated_at": request.headers.get("x-request-id")}
    if request.path == "/planted":
        body["via"] = request.route.value
    return reply(200, json=body)


def copies(fake: FakeMesh, service: str = "users") -> list[Any]:
    return [c for c in fake.calls_to(service) if c.shadow_copy]


# -- stages ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "stage", "answers", "copy"),
    [
        ("off", "off", Route.HAPROXY, None),
        ("dualwrite", "off", Route.HAPROXY, None),
        ("shadow", "shadow", Route.HAPROXY, Route.ENVOY),
        ("live", "live", Route.ENVOY, Route.HAPROXY),
        ("rampdown", "complete", Route.ENVOY, None),
        ("complete", "complete", Route.ENVOY, None),
    ],
)
def test_each_stage_says_who_answers_and_where_the_copy_goes(
    fake_mesh: FakeMesh, mesh_flags: MeshFlags, value: str, stage: str, answers: Route, copy: Route | None
) -> None:
    mesh_flags.stage("users", value)
    mesh = fake_mesh.mesh(REGISTRY)
    fake_mesh.add("users", by_route)
    response = mesh.requests_session().get("http://users/v1/x")
    info = call_info(response)
    assert info is not None
    assert (info.route, info.stage) == (answers, stage)
    assert mesh.route_for("users").stage == stage
    stats = fake_mesh.shadow_stats("users")
    assert [c.route for c in copies(fake_mesh)] == ([copy] if copy else [])
    assert stats.compared == (1 if copy else 0)
    assert stats.matched == stats.compared


def test_plain_routes_have_no_stage(fake_mesh: FakeMesh, mesh_flags: MeshFlags) -> None:
    mesh_flags.route("users", "envoy")
    mesh = fake_mesh.mesh(REGISTRY)
    fake_mesh.add("users", reply(200))
    info = call_info(mesh.requests_session().get("http://users/x"))
    assert info is not None
    assert (info.route, info.stage) == (Route.ENVOY, None)
    with call_options(route="haproxy"):  # a forced route bypasses the flag, stage and copies
        info = call_info(mesh.requests_session().get("http://users/x"))
    assert info is not None
    assert info.stage is None
    assert fake_mesh.shadow_stats("users").compared == 0
    assert not copies(fake_mesh)


def test_stage_rollouts_split_callers_like_route_rollouts(mesh_flags: MeshFlags) -> None:
    mesh_flags.stage_rollout("users", {"off": 50, "shadow": 50})
    stages = []
    for i in range(60):
        data = {**REGISTRY, "mesh": {**REGISTRY["mesh"], "caller": f"caller-{i}"}}
        with Mesh.from_dict(data) as mesh:
            stages.append(mesh.route_for("users").stage)
    assert set(stages) == {"off", "shadow"}
    assert 15 <= stages.count("shadow") <= 45
    with Mesh.from_dict({**REGISTRY, "mesh": {**REGISTRY["mesh"], "caller": "caller-7"}}) as again:
        assert again.route_for("users").stage == stages[7]  # the same caller, the same bucket


# -- the copy --------------------------------------------------------------------------------------


def test_the_copy_carries_the_callers_headers_request_id_and_timeout_and_never_retries(
    fake_mesh: FakeMesh, mesh: Mesh
) -> None:
    fake_mesh.add("users", reply(200))
    session = mesh.requests_session()
    with deadline(0.5):
        session.get("http://users/x", headers={"x-tenant": "acme", SHADOW_HEADER: "forged"})
    fake_mesh.shadow_stats("users")
    primary, copy = fake_mesh.calls_to("users")
    assert (primary.route, copy.route) == (Route.HAPROXY, Route.ENVOY)
    assert SHADOW_HEADER not in primary.headers  # the caller's own value was dropped
    assert copy.headers[SHADOW_HEADER] == "1"
    assert copy.headers["x-tenant"] == "acme"
    assert copy.headers["x-request-id"] == primary.headers["x-request-id"]
    # the caller's timeout as its call started (shortened by its deadline), and no retries
    assert primary.headers["x-mesh-timeout-ms"] == "500"
    assert copy.headers["x-envoy-upstream-rq-timeout-ms"] == "500"
    assert "x-envoy-retry-on" not in copy.headers
    assert call_info(session.get("http://users/x")) is not None


def test_the_copy_is_attempted_once_where_the_caller_is_retried(fake_mesh: FakeMesh, mesh_flags: MeshFlags) -> None:
    mesh_flags.stage("users", "live")  # Envoy answers (and retries); the copy goes via HAProxy
    mesh = fake_mesh.mesh(REGISTRY)
    fake_mesh.add("users", reply(503))
    response = mesh.requests_session().get("http://users/x")
    stats = fake_mesh.shadow_stats("users")
    primary, copy = fake_mesh.calls_to("users")
    assert response.status_code == 503
    assert primary.attempts == 3  # Envoy retried the caller's call twice
    assert copy.route is Route.HAPROXY
    assert copy.attempts == 1  # the client would have retried it twice too: never a copy
    assert stats.matched == 1


def test_only_idempotent_calls_are_copied(fake_mesh: FakeMesh, mesh: Mesh) -> None:
    fake_mesh.add("users", reply(200))
    session = mesh.requests_session()
    session.post("http://users/orders", data=b"{}")
    session.patch("http://users/orders/1", data=b"{}")
    with call_options(idempotent=False):
        session.get("http://users/x")
    with call_options(idempotent=True):
        session.post("http://users/search", data=b"{}")
    session.put("http://users/users/1", data=b"{}")  # in the default idempotent_methods
    fake_mesh.shadow_stats("users")
    assert [(c.method, c.path) for c in copies(fake_mesh)] == [("POST", "/search"), ("PUT", "/users/1")]
    assert len(fake_mesh.calls_to("users")) == 7


def test_a_sample_of_calls_is_copied(fake_mesh: FakeMesh, mesh: Mesh) -> None:
    fake_mesh.add("sampled", reply(200))
    session = mesh.requests_session()
    for i in range(600):
        session.get(f"http://sampled/{i}")
    stats = fake_mesh.shadow_stats("sampled")
    assert stats.compared == len(copies(fake_mesh, "sampled"))
    assert 120 <= stats.compared <= 240  # 30 % of 600 = 180, sd 11
    assert stats.skipped == 0


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    released = threading.Event()
    yield released
    released.set()


def test_beyond_max_in_flight_copies_are_skipped_and_the_caller_does_not_wait(
    fake_mesh: FakeMesh, mesh: Mesh, gate: threading.Event
) -> None:
    arrived = threading.Semaphore(0)

    def handler(request: UpstreamRequest) -> Any:
        if SHADOW_HEADER in request.headers:  # the copies hang until the test lets them go
            arrived.release()
            assert gate.wait(10)
        return reply(200)

    fake_mesh.add("users", handler)
    session = mesh.requests_session()
    for i in range(10):
        assert session.get(f"http://users/{i}").status_code == 200  # answered while copies hang
    for _ in range(4):
        assert arrived.acquire(timeout=10)
    held = mesh.shadow_stats("users")
    assert (held.in_flight, held.peak_in_flight, held.skipped, held.compared) == (4, 4, 6, 0)
    gate.set()
    assert mesh.shadow_drain(10)
    stats = mesh.shadow_stats("users")
    assert (stats.compared, stats.skipped, stats.in_flight, stats.peak_in_flight) == (4, 6, 0, 4)
    assert fake_mesh.shadow_stats("users").skipped == 6


def test_streamed_responses_and_one_shot_bodies_are_skipped(fake_mesh: FakeMesh, mesh: Mesh) -> None:
    fake_mesh.add("users", reply(200, text="x"))
    session = mesh.requests_session()
    session.get("http://users/stream", stream=True).close()
    session.put("http://users/upload", data=iter([b"a", b"b"]))  # a generator cannot be sent twice
    with mesh.httpx_client() as client, client.stream("GET", "http://users/stream") as response:
        response.read()
    stats = fake_mesh.shadow_stats("users")
    assert (stats.skipped, stats.compared) == (3, 0)
    assert not copies(fake_mesh)


def test_a_request_that_arrives_as_a_copy_makes_no_copies_and_passes_the_header_on(
    fake_mesh: FakeMesh, mesh: Mesh
) -> None:
    fake_mesh.add("users", reply(200))
    session = mesh.requests_session()
    for inbound, expected in (({SHADOW_HEADER: "1", "x-request-id": "inbound-1"}, 0), ({}, 1)):
        end = begin_request(inbound, header_prefix="x-envoy", context_headers=())
        try:
            session.get("http://users/x")
        finally:
            end()
        assert fake_mesh.shadow_stats("users").compared == expected
    served_copy = fake_mesh.calls_to("users")[0]
    assert served_copy.headers[SHADOW_HEADER] == "1"  # carried on: no fan-out further down
    assert served_copy.headers["x-request-id"] == "inbound-1"


# -- the comparison and its reports ----------------------------------------------------------------


def test_planted_differences_are_found_and_volatile_members_ignored(
    fake_mesh: FakeMesh, mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    fake_mesh.add("users", by_route)
    session = mesh.requests_session()
    with caplog.at_level(logging.WARNING, "mesh_client.shadow"):
        for path in ("/a", "/planted", "/b"):
            session.get(f"http://users{path}")
        stats = fake_mesh.shadow_stats("users")
    assert (stats.compared, stats.matched, stats.mismatched, stats.errors) == (3, 2, 1, 0)
    (mismatch,) = [e for e in fake_mesh.shadow_events("users") if e.result == "mismatch"]
    assert mismatch.target == "/planted"
    assert mismatch.comparison is not None
    assert [(d.where, d.primary, d.copy) for d in mismatch.comparison.differences] == [
        ("body $.via", '"haproxy"', '"envoy"')
    ]
    (line,) = caplog.messages
    assert "shadow mismatch for users GET /planted at stage shadow" in line
    assert 'body $.via: haproxy "haproxy" / envoy "envoy"' in line


def test_named_headers_are_compared(fake_mesh: FakeMesh, mesh: Mesh) -> None:
    fake_mesh.add("users", lambda r: reply(200, text="same", headers={"etag": r.route.value, "date": r.route.value}))
    mesh.requests_session().get("http://users/x")
    (event,) = fake_mesh.shadow_events("users")
    assert event.comparison is not None
    assert [d.where for d in event.comparison.differences] == ["header etag"]  # not date: not named


def test_mismatch_logs_are_sampled_and_size_capped(
    fake_mesh: FakeMesh, mesh: Mesh, caplog: pytest.LogCaptureFixture
) -> None:
    fake_mesh.add("users", lambda r: reply(200, json={f"k{i}": r.route.value * 100 for i in range(40)}))
    session = mesh.requests_session()
    with caplog.at_level(logging.WARNING, "mesh_client.shadow"):
        for i in range(LOG_BURST * 3):
            session.get(f"http://users/{i}")
            fake_mesh.shadow_stats("users")  # one at a time: the order of the lines is the calls'
    assert fake_mesh.shadow_stats("users").mismatched == LOG_BURST * 3
    assert len(caplog.messages) == LOG_BURST
    assert all(len(m) <= MAX_LOG_CHARS for m in caplog.messages)
    assert caplog.messages[0].endswith("... (cut)")


def test_errors_are_counted_per_route_and_not_compared(fake_mesh: FakeMesh, mesh: Mesh) -> None:
    fake_mesh.add("users", reply(200))
    session = mesh.requests_session()
    fake_mesh.envoy_down()  # the copy's route refuses (a copy never fails over)
    assert session.get("http://users/x").status_code == 200
    assert mesh.shadow_drain(5)
    fake_mesh.envoy_down(False)
    fake_mesh.haproxy_down("users")  # the caller's call fails; its copy is still made
    with pytest.raises(MeshConnectError):
        session.get("http://users/y")
    stats = fake_mesh.shadow_stats("users")
    assert (stats.compared, stats.errors, stats.envoy_errors, stats.haproxy_errors) == (0, 2, 1, 1)
    assert mesh.shadow_stats("users").errors == 2


def test_a_call_that_failed_over_is_not_copied(fake_mesh: FakeMesh, mesh_flags: MeshFlags) -> None:
    mesh_flags.stage("users", "live")
    mesh = fake_mesh.mesh(REGISTRY)
    fake_mesh.add("users", reply(200))
    fake_mesh.envoy_down()
    info = call_info(mesh.requests_session().get("http://users/x"))
    assert info is not None
    assert info.failed_over
    stats = fake_mesh.shadow_stats("users")
    assert (stats.skipped, stats.compared) == (1, 0)  # HAProxy against HAProxy would prove nothing


def test_the_counter_by_service_and_result(fake_mesh: FakeMesh, mesh: Mesh, otel: Otel) -> None:
    def points() -> dict[tuple[str, str], int]:
        data = otel.metrics.get_metrics_data()
        found: dict[tuple[str, str], int] = {}
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == "mesh_client.shadow.comparisons":
                        assert sm.scope.name == "mesh_client"
                        for p in metric.data.data_points:
                            a = p.attributes
                            if a["mesh.service"] == "users" and a["mesh.stage"] == "shadow":
                                found[(a["mesh.service"], a["mesh.shadow.result"])] = p.value
        return found

    before = points()
    fake_mesh.add("users", by_route)
    session = mesh.requests_session()
    for path in ("/a", "/planted", "/b"):
        session.get(f"http://users{path}")
    session.get("http://users/s", stream=True).close()
    fake_mesh.shadow_stats("users")
    after = points()
    grown = {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}
    assert grown == {("users", "match"): 2, ("users", "mismatch"): 1, ("users", "skipped"): 1}


# -- the other clients -----------------------------------------------------------------------------


def test_httpx_clients_copy_and_compare(fake_mesh: FakeMesh, mesh: Mesh) -> None:
    fake_mesh.add("users", by_route)
    with mesh.httpx_client() as client:
        assert client.get("http://users/planted").json()["via"] == "haproxy"
        client.get("http://users/a")

    async def main() -> None:
        async with mesh.httpx_async_client() as aclient:
            await aclient.get("http://users/planted")
            await aclient.get("http://users/b")
            with pytest.raises(RuntimeError, match="shadow_drain_async"):
                mesh.shadow_drain(1)  # it would block the copies' own loop
            assert await mesh.shadow_drain_async(5)

    asyncio.run(main())
    stats = fake_mesh.shadow_stats("users")
    assert (stats.compared, stats.matched, stats.mismatched) == (4, 2, 2)


class _CopiesHang(httpx.AsyncBaseTransport):
    """Stands for the network: answers the caller's calls, never a copy."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if SHADOW_HEADER in request.headers:
            await asyncio.Event().wait()
        return httpx.Response(200, content=b"ok")


def test_async_copies_cut_off_by_their_loop_ending_are_skipped(mesh_flags: MeshFlags) -> None:
    mesh_flags.stage("users", "shadow")
    with Mesh.from_dict(REGISTRY) as mesh:

        async def call() -> None:
            async with httpx.AsyncClient(transport=mesh.httpx_async_transport(_CopiesHang())) as client:
                assert (await client.get("http://users/x")).status_code == 200
                await asyncio.sleep(0)  # the copy starts, and hangs

        asyncio.run(call())  # cancels what is left: the copy's task
        assert mesh.shadow_drain(5)
        stats = mesh.shadow_stats("users")
        assert (stats.skipped, stats.compared, stats.in_flight) == (1, 0, 0)

        loop = asyncio.new_event_loop()
        loop.run_until_complete(call())
        loop.close()  # closed, not cancelled: the copy can never end
        assert mesh.shadow_drain(5)
        assert mesh.shadow_stats("users").skipped == 2


def test_compressed_bodies_are_compared_decoded(fake_mesh: FakeMesh, mesh: Mesh) -> None:
    import gzip

    def handler(request: UpstreamRequest) -> Any:
        level = 1 if request.route is Route.ENVOY else 9  # other bytes, the same JSON
        body = gzip.compress(b'{"a": [1, 2, 3], "b": "xxxxxxxxxxxxxxxxxxxxxxxx"}', compresslevel=level, mtime=level)
        return reply(200, body=body, headers={"content-encoding": "gzip", "content-type": "application/json"})

    fake_mesh.add("users", handler)
    with mesh.httpx_client() as client:
        client.get("http://users/x")
    mesh.requests_session().get("http://users/x")
    assert fake_mesh.shadow_stats("users").matched == 2


IDL = """
struct User {1: i64 id, 2: string name}
exception NotFound {1: string message}
service Users {
    User get(1: i64 id) throws (1: NotFound nf),
    User rename(1: i64 id, 2: string name),
}
"""


@pytest.fixture(scope="module")
def users_thrift(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return load_idl(tmp_path_factory, IDL, "shadow_users_thrift")


def test_thrift_results_and_exception_types_are_compared(fake_mesh: FakeMesh, mesh: Mesh, users_thrift: Any) -> None:
    def get(id: int) -> Any:
        if id < 0:
            raise users_thrift.NotFound(message=f"no user {id}")
        return users_thrift.User(id=id, name="planted" if fake_route[0] is Route.ENVOY and id == 2 else "same")

    fake_route: list[Route] = [Route.HAPROXY]

    class Handler:
        def get(self, id: int) -> Any:
            return get(id)

        def rename(self, id: int, name: str) -> Any:
            return users_thrift.User(id=id, name=name)

    def handler(request: UpstreamRequest) -> Any:
        fake_route[0] = request.route
        method = getattr(Handler(), request.method)
        return method(**request.args)

    fake_mesh.add("users-thrift", handler)
    with mesh.thrift_client(users_thrift.Users, "users-thrift") as client:
        assert client.get(1).name == "same"
        assert client.get(2).name == "same"  # the caller gets HAProxy's answer
        with pytest.raises(users_thrift.NotFound):
            client.get(-1)
        client.rename(1, "x")  # not idempotent: never copied
    stats = fake_mesh.shadow_stats("users-thrift")
    assert (stats.compared, stats.matched, stats.mismatched) == (3, 2, 1)
    (mismatch,) = [e for e in fake_mesh.shadow_events("users-thrift") if e.result == "mismatch"]
    assert mismatch.target == "get"
    assert mismatch.comparison is not None
    assert "planted" in mismatch.comparison.differences[0].copy
    assert [c.method for c in copies(fake_mesh, "users-thrift")] == []  # framed Thrift carries no headers
    assert [c.method for c in fake_mesh.calls_to("users-thrift")].count("rename") == 1


# -- LaunchDarkly migration op events --------------------------------------------------------------


def test_launchdarkly_gets_migration_op_events(fake_mesh: FakeMesh) -> None:
    from ldclient import LDClient
    from ldclient.config import Config
    from ldclient.integrations.test_data import TestData
    from ldclient.interfaces import EventProcessor
    from ldclient.migrations import Origin

    events: list[Any] = []

    class Capture(EventProcessor):
        def __init__(self, config: Any) -> None:
            pass

        def send_event(self, event: Any) -> None:
            events.append(event)

        def flush(self) -> None:
            pass

        def stop(self) -> None:
            pass

    td = TestData.data_source()
    td.update(td.flag("mesh-route-users").variations("off", "shadow", "live").variation_for_all(1))
    config = Config("sdk-key", update_processor_class=td, event_processor_class=Capture, diagnostic_opt_out=True)
    client = LDClient(config, start_wait=5)
    router = make_router(load_mapping(REGISTRY), client_factory=lambda flags: client)
    mesh = fake_mesh.mesh(REGISTRY, router=router)
    fake_mesh.add("users", by_route)
    session = mesh.requests_session()
    for path in ("/a", "/planted", "/b"):
        if path == "/b":
            fake_mesh.envoy_down()
        session.get(f"http://users{path}")
        assert mesh.shadow_drain(5)  # one at a time: the events in the calls' order
    ops = [e for e in events if type(e).__name__ == "MigrationOpEvent"]
    assert [op.consistent for op in ops] == [True, False, None]
    assert all(op.invoked == {Origin.OLD, Origin.NEW} for op in ops)
    assert [op.errors for op in ops] == [set(), set(), {Origin.NEW}]
    assert all(set(op.latencies) == {Origin.OLD, Origin.NEW} for op in ops)
    assert all(op.key == "mesh-route-users" for op in ops)


# -- lifecycle -------------------------------------------------------------------------------------


def test_close_stops_the_pool(fake_mesh: FakeMesh, mesh: Mesh, gate: threading.Event) -> None:
    def handler(request: UpstreamRequest) -> Any:
        if SHADOW_HEADER in request.headers:
            assert gate.wait(10)
        return reply(200)

    fake_mesh.add("users", handler)
    mesh.requests_session().get("http://users/x")
    workers = [t for t in threading.enumerate() if t.name.startswith("mesh-shadow")]
    assert workers
    mesh.close()
    gate.set()
    for worker in workers:
        worker.join(10)
        assert not worker.is_alive()
    assert mesh.shadow_stats("users").compared == 1  # the copy under way finished


def test_shadow_stats_names_only_registered_services(mesh: Mesh) -> None:
    with pytest.raises(KeyError, match="nosuch"):
        mesh.shadow_stats("nosuch")


def test_the_span_names_the_stage_and_copies_make_no_telemetry_of_their_own(
    fake_mesh: FakeMesh, mesh: Mesh, otel: Otel
) -> None:
    fake_mesh.add("users", reply(200))
    mesh.requests_session().get("http://users/x")
    assert fake_mesh.shadow_stats("users").matched == 1
    (span,) = [s for s in otel.finished() if s.attributes is not None and s.attributes.get("mesh.service") == "users"]
    assert span.attributes is not None
    assert (span.attributes["mesh.stage"], span.attributes["mesh.route"]) == ("shadow", "haproxy")


def test_a_copy_in_flight_when_the_fake_stops_is_recorded_by_that_fake(mesh_flags: MeshFlags) -> None:
    """A test's last call may leave its copy running: the fake that saw the call waits for it as
    it stops, so the copy is counted there and never by the next test's fake."""
    mesh_flags.stage("users", "shadow")
    arrived, release = threading.Event(), threading.Event()

    def handler(request: UpstreamRequest) -> Any:
        if SHADOW_HEADER in request.headers:  # the copy holds until the fake is stopping
            arrived.set()
            assert release.wait(10)
        return reply(200)

    fake = FakeMesh().__enter__()
    fake.add("users", handler)
    assert fake.mesh(REGISTRY).requests_session().get("http://users/x").status_code == 200
    assert arrived.wait(10)
    stopping = threading.Thread(target=fake.__exit__, args=(None, None, None))
    stopping.start()
    stopping.join(0.2)  # a stop that did not wait for the copy would have ended by now
    stopped_early = not stopping.is_alive()
    release.set()
    stopping.join(10)
    assert not stopping.is_alive()
    assert not stopped_early, "the fake stopped with its copy still in flight"
    with FakeMesh() as next_fake:
        assert next_fake.shadow_stats("users").compared == 0
    assert [e.result for e in fake.shadow_events("users", timeout=0)] == ["match"]
