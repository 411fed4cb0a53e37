"""The :class:`Mesh`: a registry, its route flags, and factories for the drop-in clients."""

from __future__ import annotations

import atexit
import itertools
import threading
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from .budget import RetryBudget
from .circuit import SidecarCircuit
from .context import outbound_headers
from .core import CallRun
from .errors import InvalidServiceURL, MeshError
from .flag_router import FlagRouter, RouteDecision, Router
from .fork import reset_in_child
from .overrides import in_force as overrides_in_force
from .plan import ServicePlan
from .policy import NO_OPTIONS, UNSET, CallOptions, current_options
from .registry import Address, MeshConfig, ServiceConfig, load_file, load_mapping
from .routing import make_router
from .shadow.runner import ShadowRunner, copy_order
from .shadow.stages import COPYING
from .shadow.stats import ShadowStats
from .steering import Steering
from .telemetry import call_telemetry

if TYPE_CHECKING:
    import httpx

    from .http.httpx import AsyncMeshTransport, MeshTransport
    from .http.requests import MeshSession
    from .thrift.client import ThriftClient

__all__ = ["Mesh"]

_C = TypeVar("_C")


class Mesh:
    """A service mesh as seen by one caller: the registry plus the flags that route its calls.

    Build it with :meth:`from_file` or :meth:`from_dict`, make clients from it, and
    :meth:`close` it (or use it as a context manager) to stop the flag watcher::

        with Mesh.from_file("mesh.toml") as mesh:
            session = mesh.requests_session()
            session.get("http://users/v1/users/1")

    A Mesh and its clients made before ``fork()`` (gunicorn ``--preload``, uWSGI, Celery
    prefork, ``multiprocessing``) work in the child with no code of yours: the child restarts
    the flag client, drops the pooled connections and starts retry budgets and sidecar circuits
    clean (see :mod:`mesh_client.fork`). A pickled Mesh travels as its registry and is unpickled
    as the mesh of that registry in the target process (:func:`mesh_for_registry`).
    """

    def __init__(self, config: MeshConfig, *, router: Router | None = None) -> None:
        self.config = config
        self._router: Router = router if router is not None else make_router(config)
        self._closed = False
        self._lock = threading.Lock()
        self._clients: weakref.WeakSet[Any] = weakref.WeakSet()
        #: the asyncio clients, closed by :meth:`aclose` (they need their event loop)
        self._async_clients: weakref.WeakSet[httpx.AsyncClient] = weakref.WeakSet()
        self._budgets: dict[str, RetryBudget] = {}
        self._circuits: dict[Address, SidecarCircuit] = {}
        #: per service: what its calls share (retry budget, sidecar circuit, header rules)
        self._plans: dict[str, ServicePlan] = {}
        #: the copies made at the shadow and live stages (see mesh_client.shadow)
        self._shadow = ShadowRunner(config, self._router)
        #: applies the routing overrides in force to each call (see mesh_client.overrides)
        self._steering = Steering(config)
        self._serial = next(_serials)
        _live.add(self)
        reset_in_child(self, Mesh._after_fork)

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> Mesh:
        """Load a registry TOML file. Relative ``flags.path`` is resolved against its folder."""
        return cls(load_file(path), **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base_dir: str | Path | None = None, **kwargs: Any) -> Mesh:
        """Build from registry data (the TOML's structure as dicts). Relative ``flags.path`` is
        resolved against ``base_dir`` (default: the current directory)."""
        return cls(load_mapping(data, base_dir=Path(base_dir) if base_dir is not None else None), **kwargs)

    # -- routing --------------------------------------------------------------------------------

    @property
    def router(self) -> Router:
        return self._router

    def route_for(self, service: str) -> RouteDecision:
        """What the flags decide now for ``service``, and why (never raises for flag trouble)."""
        self.config.service(service)
        return self._router.decide(service)

    def http_service(self, scheme: str, host: str, port: int | None, has_userinfo: bool) -> ServiceConfig | None:
        """The registered HTTP service a URL addresses, or None for any other host. For wrappers
        (:class:`~mesh_client.wrapping.CallStarter`), not application code.

        Raises :class:`InvalidServiceURL` for a registered name addressed with a port, user info,
        a scheme other than ``http``, or a Thrift service.
        """
        svc = self.config.services.get(host.lower().rstrip("."))
        if svc is None:
            return None
        problems = []
        if scheme.lower() != "http":
            problems.append(f"scheme {scheme!r} (use http://; the sidecar secures traffic between hosts)")
        if port is not None:
            problems.append(f"port {port} (the service's name is its address; drop the port)")
        if has_userinfo:
            problems.append("user info in the URL (send credentials in a header)")
        if svc.protocol != "http":
            problems.append(f"protocol {svc.protocol!r} (a Thrift service is not called over HTTP)")
        if problems:
            raise InvalidServiceURL(f"cannot route to mesh service {svc.name!r}: " + "; ".join(problems))
        return svc

    def start_call(
        self,
        service: ServiceConfig,
        method: str,
        extra: CallOptions | None = None,
        replayable: bool = True,
        source: object = None,
    ) -> CallRun[Any]:
        """For wrappers (:class:`~mesh_client.wrapping.CallStarter`), not application code.

        The I/O-free run of one call: policy merged with the current :func:`call_options` and
        ``extra``, route decided by the flag (or forced by the options). ``method`` is the HTTP
        method, or the Thrift method name for Thrift services. ``source``, read by telemetry only
        (when an SDK is installed): the library's request (URL, ``User-Agent``), or for Thrift the
        thriftpy2 service. (Wrappers pass all five positionally: keyword arguments cost more, on
        every call.)"""
        if self._closed:
            raise MeshError(f"this Mesh ({self.config.source}) is closed; build a new one to make calls")
        order = copy_order()
        if order is not None and order.service == service.name:  # this request is a shadow copy
            return order.start(method if service.protocol == "thrift" else method.upper(), replayable)
        plan = self._plans.get(service.name)
        if plan is None or plan.service is not service:
            plan = self._plan(service)
        options = current_options()
        if extra is not None:
            options = options.merged(extra)
        stage = None
        if options is NO_OPTIONS:  # the usual case: the registry's policy, the flag's route
            policy, idempotent = service.policy, None
            decision = self._router.decide(service.name)
            route, reason, stage = decision.route, decision.reason, decision.stage
        else:
            policy = options.apply(service.policy)
            idempotent = None if options.idempotent is UNSET else options.idempotent
            if options.route is not UNSET:
                route, reason = options.route, f"forced to {options.route.value} by call options"
            else:
                decision = self._router.decide(service.name)
                route, reason, stage = decision.route, decision.reason, decision.stage
        if service.protocol != "thrift":  # (a Thrift method is the IDL's name)
            method = method.upper()
        telemetry = call_telemetry(service.name, method, source, service.protocol)  # (None: no SDK)
        if plan.carries_headers:
            try:
                context_headers = outbound_headers(telemetry.propagation_context() if telemetry is not None else None)
            except ValueError:
                if telemetry is not None:
                    telemetry.span.end()
                raise
        else:  # framed Thrift: nowhere to put them
            context_headers = []
        overrides = overrides_in_force()
        if overrides is not None:  # routing overrides: carried on; maybe a variant (mesh_client.steering)
            forced = options is not NO_OPTIONS and options.route is not UNSET
            plan, route, reason, headers, variant, haproxy_variant = self._steering.steer(
                overrides, plan, route, reason, forced=forced
            )
            context_headers += headers
        # (positional, in the constructor's order: keywords cost more on every call)
        run: CallRun[Any] = CallRun(
            plan, method, policy, route, reason, tuple(context_headers), telemetry, idempotent, replayable
        )
        if overrides is not None:
            run.variant, run.haproxy_variant = variant, haproxy_variant
        if stage is not None:
            run.stage = stage
            if stage in COPYING and run.variant is None:  # (a call to a variant is not copied)
                run.shadow = self._shadow.for_call(run, idempotent, replayable)
        return run

    def _plan(self, service: ServiceConfig) -> ServicePlan:
        """What every call to ``service`` shares (made on its first call, then kept)."""
        thrift = service.protocol == "thrift"
        envoy_address = self.config.envoy_thrift if thrift else self.config.envoy_http
        plan = ServicePlan.of(
            self.config,
            service,
            envoy_address=envoy_address,
            # Envoy's thrift_proxy has no timeouts or retries: the client keeps them on both routes
            envoy_enforces=not thrift,
            budget=self.retry_budget(service.name),
            circuit=self._circuit(envoy_address),
        )
        if self.config.services.get(service.name) is service:  # (not a stranger's config of that name)
            self._plans[service.name] = plan
        return plan

    def retry_budget(self, service: str) -> RetryBudget:
        """The retry budget shared by every call to ``service`` made through this mesh."""
        budget = self._budgets.get(service)
        if budget is None:
            with self._lock:
                budget = self._budgets.setdefault(service, RetryBudget(self.config.service(service).retry_budget))
        return budget

    def _circuit(self, address: Address | None) -> SidecarCircuit | None:
        if address is None:
            return None
        circuit = self._circuits.get(address)
        if circuit is None:
            with self._lock:
                circuit = self._circuits.setdefault(address, SidecarCircuit())
        return circuit

    # -- shadow reads -------------------------------------------------------------------------------

    def shadow_stats(self, service: str) -> ShadowStats:
        """The shadow copies of ``service``'s calls made through this mesh so far: ``compared``,
        ``matched``, ``mismatched``, ``errors`` (with ``envoy_errors`` / ``haproxy_errors``),
        ``skipped``, ``in_flight`` (see docs/shadow.md). Copies still in flight are not counted
        yet: :meth:`shadow_drain` waits for them."""
        self.config.service(service)
        return self._shadow.stats(service)

    def shadow_drain(self, timeout: float | None = None) -> bool:
        """Wait until no shadow copy of this mesh is in flight, at most ``timeout`` seconds (None:
        no limit); False when some still are. Raises ``RuntimeError`` on a thread whose running
        event loop has copies pending (they could not finish): there, ``await``
        :meth:`shadow_drain_async`."""
        return self._shadow.drain(timeout)

    async def shadow_drain_async(self, timeout: float | None = None) -> bool:
        """:meth:`shadow_drain` for asyncio code: the running loop's copy tasks go on meanwhile."""
        return await self._shadow.drain_async(timeout)

    # -- clients ----------------------------------------------------------------------------------

    def requests_session(self) -> MeshSession:
        """A ``requests.Session`` subclass that routes registered services through the mesh."""
        from .http.requests import MeshSession

        return self.track_client(MeshSession(self))

    def thrift_client(self, service: Any, name: str, *, max_connections: int = 32) -> ThriftClient:
        """A Thrift client for the registered Thrift service ``name``, with the methods of the
        thriftpy2 ``service`` (``thriftpy2.load(...).Users``)."""
        from .thrift.client import ThriftClient

        config = self.config.service(name)
        if config.protocol != "thrift":
            raise InvalidServiceURL(
                f"service {name!r} has protocol {config.protocol!r}; use the HTTP clients for it, not thrift_client"
            )
        if not hasattr(service, "thrift_services"):
            raise TypeError(f"{service!r} is not a thriftpy2 service (load the IDL with thriftpy2.load)")
        return self.track_client(ThriftClient(self, service, config, max_connections=max_connections))

    def httpx_transport(self, transport: httpx.BaseTransport | None = None, **kwargs: Any) -> MeshTransport:
        """An ``httpx.BaseTransport`` routing registered services through the mesh and passing
        every other request to ``transport`` (default: ``httpx.HTTPTransport(**kwargs)``)."""
        from .http.httpx import MeshTransport

        return self.track_client(MeshTransport(self, transport, **kwargs))

    def httpx_async_transport(
        self, transport: httpx.AsyncBaseTransport | None = None, **kwargs: Any
    ) -> AsyncMeshTransport:
        """The asyncio twin of :meth:`httpx_transport`."""
        from .http.httpx import AsyncMeshTransport

        return AsyncMeshTransport(self, transport, **kwargs)

    def httpx_client(self, **kwargs: Any) -> httpx.Client:
        """An ``httpx.Client`` built with ``kwargs`` whose calls to registered services go through
        the mesh (also when proxy environment variables are set)."""
        from .http._httpx_client import build_client

        return self.track_client(build_client(self, kwargs))

    def httpx_async_client(self, **kwargs: Any) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient``, as :meth:`httpx_client`."""
        from .http._httpx_client import build_async_client

        client = build_async_client(self, kwargs)
        self._async_clients.add(client)
        return client

    # -- lifecycle --------------------------------------------------------------------------------

    def track_client(self, client: _C) -> _C:
        """Close ``client`` when this mesh closes (for wrappers:
        :class:`~mesh_client.wrapping.CallStarter`); returns it."""
        self._clients.add(client)
        return client

    def close(self) -> None:
        """Stop the flag watcher, release the flag client, stop the shadow copies' thread pool
        (copies not started are skipped) and close the synchronous sessions, clients and
        transports made from this mesh (their connection pools). Asyncio clients need their
        event loop: :meth:`aclose` (or ``async with mesh``) closes them too; otherwise their owner
        does (``await client.aclose()``). Calls made afterwards raise."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._shadow.close()
        for client in list(self._clients):
            client.close()
        self._router.close()

    async def aclose(self) -> None:
        """:meth:`close`, and first ``await client.aclose()`` for every asyncio client made from
        this mesh (on the running event loop, which must be theirs)."""
        for client in list(self._async_clients):
            await client.aclose()
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def _after_fork(self) -> None:
        """In a forked child (see :mod:`mesh_client.fork`): new locks, retry budgets and sidecar
        circuits that start clean, as in a freshly started process, and the route flags' client
        restarted (its threads did not survive the fork)."""
        self._lock = threading.Lock()
        self._budgets = {}
        self._circuits = {}
        self._plans = {}
        if self._closed:
            return
        after_fork = getattr(self._router, "after_fork", None)
        if callable(after_fork):
            after_fork()

    def __reduce__(self) -> tuple[Any, ...]:
        # a Mesh travels as its registry: see mesh_for_registry
        return (mesh_for_registry, (self.config, self._serial))

    def __enter__(self) -> Mesh:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> Mesh:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        cfg = self.config
        return f"<Mesh caller={cfg.caller!r} services={len(cfg.services)} source={cfg.source!r} {state}>"

    @property
    def flag_client(self) -> Any | None:
        """The LaunchDarkly client behind the route flags, if any."""
        return self._router.client if isinstance(self._router, FlagRouter) else None


#: every Mesh not yet collected (for :func:`mesh_for_registry`), and the order they were made in
_live: weakref.WeakSet[Mesh] = weakref.WeakSet()
_serials = itertools.count()


class _Unpickled:
    """The meshes :func:`mesh_for_registry` built (kept for the life of the process)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.meshes: list[Mesh] = []
        reset_in_child(self, _Unpickled._after_fork)
        atexit.register(self.close)

    def _after_fork(self) -> None:
        self.lock = threading.Lock()

    def close(self) -> None:
        with self.lock:
            meshes, self.meshes = self.meshes, []
        for mesh in meshes:
            mesh.close()


_unpickled = _Unpickled()


def mesh_for_registry(config: MeshConfig, serial: int | None = None) -> Mesh:
    """The :class:`Mesh` an unpickled object (a pickled ``Mesh``, a ``MeshSession``) is bound to
    in this process, by this rule:

    1. the Mesh it was pickled from, if it is open in this process (pickled and unpickled in one
       process, or in a child forked from it; ``serial`` tells which one it was);
    2. else the open Mesh made last whose registry equals ``config`` (:class:`MeshConfig` ``==``);
    3. else a Mesh built from ``config`` (its flag source started anew), which the objects
       unpickled later in this process share, closed when the process exits.

    A Mesh made with a router of your own travels as its registry too: rule 3 builds the router
    from the registry's ``[flags]``."""
    with _unpickled.lock:
        candidates = [mesh for mesh in list(_live) if not mesh.closed and mesh.config == config]
        found = next((mesh for mesh in candidates if mesh._serial == serial), None)
        if found is None:
            found = max(candidates, key=lambda mesh: mesh._serial, default=None)
        if found is None:
            found = Mesh(config)
            _unpickled.meshes.append(found)
        return found
