"""Making the copies: which calls get one, where it runs, and what is done with its answer.

:meth:`ShadowRunner.for_call` (from ``Mesh.start_call``, at the
``shadow`` and ``live`` stages) picks the calls to copy: idempotent ones (the service's
``idempotent_methods`` or ``call_options(idempotent=True)``), a ``sample`` of them, none while the
request being served is itself a copy (it arrived with ``x-mesh-shadow``). Once such a call is
answered, the wrapper hands its answer and a way to send the same request again to
:meth:`ShadowCall.submit` (sync clients: a small thread pool) or :meth:`ShadowCall.submit_task`
(asyncio: a task on the caller's loop). Both return at once; at most ``max_in_flight`` copies per
service run at a time, the rest are skipped.

The copy is the same request sent through the same wrapper, in a fresh context where
:func:`copy_order` tells ``start_call`` to plan it as the copy: down the other route, with the
caller's timeout (what the call had when it started), no retries, no retry budget, no failover,
no telemetry of its own, and the caller's context headers (the same ``x-request-id`` and trace
context) plus ``x-mesh-shadow: 1``.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import random
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Final

from .. import clock
from ..context import REQUEST_ID_HEADER, current_inbound
from ..core import CallRun
from ..fork import reset_in_child
from ..plan import ServicePlan
from ..retrying import MIN_ATTEMPT
from ..steps import Done, Fail
from . import SHADOW_HEADER
from .answers import decoded, failed
from .compare import Answer, compare
from .report import MismatchLog, count_comparison, track_migration
from .stages import copy_route
from .stats import Counters, ShadowEvent, ShadowStats, notify

if TYPE_CHECKING:
    from ..registry import MeshConfig, ServiceConfig

__all__ = ["CopyOrder", "ShadowCall", "ShadowRunner", "copy_order", "drain_all"]

log = logging.getLogger("mesh_client.shadow")

#: the thread pool's size: the services' ``max_in_flight`` summed, at most this
MAX_WORKERS: Final = 8
_SHADOW_ITEM: Final = (SHADOW_HEADER, "1")

#: set (in the copy's own context only) while a copy is sent: ``start_call`` plans it as the copy
_order: contextvars.ContextVar[CopyOrder | None] = contextvars.ContextVar("mesh_client.shadow.order", default=None)
#: every runner not yet collected (for :func:`drain_all`)
_runners: weakref.WeakSet[ShadowRunner] = weakref.WeakSet()

#: (the library's response, the header names compared) -> the answer, or None: not comparable
AnswerOf = Callable[[Any, tuple[str, ...]], Answer | None]


#: ``copy_order()``: the copy being sent in this context, if any (read by ``Mesh.start_call`` on
#: every call: the context variable's own ``get``, no Python frame of its own)
copy_order: Final[Callable[[], CopyOrder | None]] = _order.get


class _Service:
    """One service's shadow state in one runner (guarded by the runner's lock)."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.counters = Counters()
        self.log = MismatchLog(config.name)
        self.copy_plan: tuple[ServicePlan, ServicePlan] | None = None  # (primary plan, copy plan)


class ShadowRunner:
    """The copies of one :class:`~mesh_client.Mesh`: counters per service, the thread pool, the
    asyncio tasks. Thread-safe; reset in a forked child (new pool, zero counts)."""

    def __init__(self, config: MeshConfig, router: Any) -> None:
        self._config = config
        self._router = router
        #: LaunchDarkly migration op events (a flag file's client sends no events at all)
        self._track = config.flags.source != "file"
        self._fresh()
        self._closed = False
        reset_in_child(self, ShadowRunner._fresh)
        _runners.add(self)

    def _fresh(self) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._services = {name: _Service(svc) for name, svc in self._config.services.items()}
        self._pending = 0
        self._executor: ThreadPoolExecutor | None = None
        self._tasks: dict[asyncio.Task[None], _Job] = {}

    # -- picking calls ---------------------------------------------------------------------------

    def for_call(self, run: CallRun[Any], idempotent: bool | None, replayable: bool) -> ShadowCall | None:
        """The copy to make of ``run`` (at a stage that copies) once it is answered, or None."""
        service = self._services.get(run.plan.service.name)
        if service is None or service.config is not run.plan.service:
            return None  # (a stranger's config of that name)
        sample = service.config.shadow.sample
        if idempotent is None:
            idempotent = run.method in run.policy.idempotent_methods
        if not idempotent or not sample:
            return None
        inbound = current_inbound()
        if inbound is not None and inbound.shadow:
            return None  # serving a copy: a shadow read never fans out into more copies
        if sample < 1 and random.random() >= sample:
            return None
        call = ShadowCall(self, service, run, idempotent)
        if not replayable:
            call.skip("the request body cannot be sent twice")
            return None
        return call

    # -- reading back ------------------------------------------------------------------------------

    def stats(self, name: str) -> ShadowStats:
        service = self._services.get(name)
        if service is None:
            return ShadowStats(name)
        with self._lock:
            return service.counters.snapshot(name)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until no copy is in flight (at most ``timeout`` seconds); False on timeout. From
        a thread running an event loop with copies of its own pending, use :meth:`drain_async`."""
        self._sweep()
        loop = _running_loop()
        if loop is not None and any(task.get_loop() is loop and not task.done() for task in list(self._tasks)):
            raise RuntimeError(
                "shadow copies made by asyncio clients on this event loop are pending, and waiting here "
                "would block them: use `await mesh.shadow_drain_async()`"
            )
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    async def drain_async(self, timeout: float | None = None) -> bool:
        """:meth:`drain` from a coroutine: lets this loop's copy tasks finish while waiting."""
        loop = asyncio.get_running_loop()
        until = None if timeout is None else loop.time() + timeout
        mine = [task for task in list(self._tasks) if task.get_loop() is loop and not task.done()]
        if mine:
            _, waiting = await asyncio.wait(mine, timeout=timeout)
            if waiting:
                return False
        left = None if until is None else max(0.0, until - loop.time())
        return await loop.run_in_executor(None, self.drain, left)

    def _sweep(self) -> None:
        """Settle the copy tasks whose event loop was closed before they ran to the end."""
        for task, job in list(self._tasks.items()):
            if task.get_loop().is_closed():
                self._tasks.pop(task, None)
                task.get_coro().close()  # (it will never run)
                job.settle(ShadowEvent(job.service.config.name, "skipped", job.stage, reason="the event loop closed"))

    def close(self) -> None:
        """Stop the pool: copies not started yet are skipped; running ones finish (bounded by
        their timeout)."""
        self._closed = True
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    # -- running copies --------------------------------------------------------------------------

    def _admit(self, service: _Service) -> bool:
        """Count a copy in flight, unless ``max_in_flight`` are already."""
        with self._lock:
            counters = service.counters
            if counters.in_flight >= service.config.shadow.max_in_flight:
                return False
            counters.in_flight += 1
            counters.peak_in_flight = max(counters.peak_in_flight, counters.in_flight)
            self._pending += 1
            return True

    def _finished(self, service: _Service, event: ShadowEvent, admitted: bool) -> None:
        notify(event)
        try:
            count_comparison(event.service, event.result, event.stage)
        except Exception:  # pragma: no cover - a metrics SDK failing must not leak the copy's slot
            log.exception("mesh_client: counting a shadow copy failed")
        with self._lock:
            service.counters.count(event)
            if admitted:
                service.counters.in_flight -= 1
                self._pending -= 1
                if not self._pending:
                    self._idle.notify_all()

    def _pool(self) -> ThreadPoolExecutor:
        executor = self._executor
        if executor is None:
            with self._lock:
                if self._executor is None:
                    total = sum(s.config.shadow.max_in_flight for s in self._services.values())
                    self._executor = ThreadPoolExecutor(
                        max_workers=max(1, min(MAX_WORKERS, total)), thread_name_prefix="mesh-shadow"
                    )
                executor = self._executor
        return executor

    def _copy_plan(self, service: _Service, plan: ServicePlan) -> ServicePlan:
        """The plan copies run on: the primary's, without failover, retry budget or circuit."""
        cached = service.copy_plan
        if cached is not None and cached[0] is plan:
            return cached[1]
        copy = ServicePlan.of(
            dataclasses.replace(plan.mesh, failover=False),
            plan.service,
            envoy_address=plan.envoy_address,
            envoy_enforces=plan.envoy_enforces,
            clock=plan.clock,
            jitter=plan.jitter,
        )
        service.copy_plan = (plan, copy)
        return copy


class CopyOrder:
    """Tells ``Mesh.start_call`` (through :func:`copy_order`) to plan the request being sent as
    the copy of ``call``."""

    __slots__ = ("call",)

    def __init__(self, call: ShadowCall) -> None:
        self.call = call

    @property
    def service(self) -> str:
        return self.call.service.config.name

    def start(self, method: str, replayable: bool) -> CallRun[Any]:
        call = self.call
        primary = call.run
        timeout = max(primary.end - primary.started, MIN_ATTEMPT)  # the caller's, as it started
        per_try = primary.policy.per_try_timeout
        policy = primary.policy.new(
            timeout=timeout, retries=0, per_try_timeout=per_try if per_try is not None and per_try < timeout else None
        )
        headers = primary.context_headers
        if _SHADOW_ITEM not in headers:
            headers = (*headers, _SHADOW_ITEM)
        run: CallRun[Any] = CallRun(
            call.runner._copy_plan(call.service, primary.plan),
            method,
            policy,
            call.route,
            f"shadow copy at stage {call.stage} (the caller's answer came via {primary.route.value})",
            context_headers=headers,
            idempotent=call.idempotent,
            replayable=replayable,
        )
        run.stage = call.stage
        return run


class _Job:
    """One admitted copy (counted in flight), settled exactly once: by its end, or when it can no
    longer run. ``elapsed``: the seconds the caller's call took."""

    __slots__ = ("_settled", "elapsed", "runner", "service", "stage")

    def __init__(self, runner: ShadowRunner, service: _Service, stage: str, elapsed: float) -> None:
        self.runner = runner
        self.service = service
        self.stage = stage
        self.elapsed = elapsed
        self._settled = False

    def settle(self, event: ShadowEvent) -> None:
        with self.runner._lock:
            if self._settled:
                return
            self._settled = True
        self.runner._finished(self.service, event, admitted=True)


class ShadowCall:
    """The copy to make of one call (made by :meth:`ShadowRunner.for_call`)."""

    __slots__ = ("idempotent", "route", "run", "runner", "service", "stage")

    def __init__(self, runner: ShadowRunner, service: _Service, run: CallRun[Any], idempotent: bool) -> None:
        self.runner = runner
        self.service = service
        self.run = run
        self.stage: str = run.stage or "shadow"
        self.route = copy_route(self.stage)
        self.idempotent = idempotent

    def skip(self, reason: str) -> None:
        """Count the call as skipped: picked for a copy that will not be made."""
        event = ShadowEvent(self.service.config.name, "skipped", self.stage, self.run.method, reason=reason)
        self.runner._finished(self.service, event, admitted=False)

    def _admit(self, result: Done[Any] | Fail, answer_of: AnswerOf | None) -> Answer | None:
        """The caller's answer when a copy may start now (counted in flight), else None (skipped)."""
        if result.info.failed_over or result.info.route is self.route:
            self.skip("the call failed over to the route the copy would take")
            return None
        if isinstance(result, Fail):
            if not result.info.attempts:
                self.skip("the call was never sent")
                return None
            primary: Answer | None = Answer(error=result.message[:300])
        else:
            names = self.service.config.shadow.compare_headers
            primary = answer_of(result.response, names) if answer_of is not None else None
            if primary is None:
                self.skip("the response is streamed")
                return None
        if self.runner._closed:
            self.skip("the mesh is closed")
            return None
        if not self.runner._admit(self.service):
            self.skip("max_in_flight copies were in flight")
            return None
        return primary

    def submit(
        self, result: Done[Any] | Fail, answer_of: AnswerOf | None, send: Callable[[], Any], target: str
    ) -> None:
        """Copy a call of a sync client, in the thread pool. ``answer_of`` reads the library's
        response (None: the caller streams it); ``send()`` sends the request again and returns the
        response (or an :class:`Answer`). Returns at once."""
        primary = self._admit(result, answer_of)
        if primary is None:
            return
        job = _Job(self.runner, self.service, self.stage, result.info.elapsed)
        try:
            pool = self.runner._pool()
            future = pool.submit(contextvars.Context().run, self._copy, job, primary, answer_of, send, target)
        except RuntimeError:  # the pool was shut down meanwhile (the mesh closed)
            job.settle(ShadowEvent(self.service.config.name, "skipped", self.stage, reason="the mesh is closed"))
            return
        future.add_done_callback(lambda f: _cancelled(f, job))

    def submit_task(
        self, result: Done[Any] | Fail, answer_of: AnswerOf | None, send: Callable[[], Awaitable[Any]], target: str
    ) -> None:
        """Copy a call of an asyncio client, in a task on the running loop (as :meth:`submit`)."""
        primary = self._admit(result, answer_of)
        if primary is None:
            return
        job = _Job(self.runner, self.service, self.stage, result.info.elapsed)
        loop = asyncio.get_running_loop()
        task = contextvars.Context().run(loop.create_task, self._copy_async(job, primary, answer_of, send, target))
        self.runner._tasks[task] = job
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        job = self.runner._tasks.pop(task, None)
        if job is not None and task.cancelled():  # (also before it ever ran: no except block saw it)
            job.settle(ShadowEvent(self.service.config.name, "skipped", self.stage, reason="the copy was cancelled"))

    def _copy(
        self, job: _Job, primary: Answer, answer_of: AnswerOf | None, send: Callable[[], Any], target: str
    ) -> None:
        _order.set(CopyOrder(self))
        started = clock.monotonic()
        try:
            copy = self._answer(send(), answer_of)
        except Exception as exc:
            copy = failed(exc)
        self._settle(job, primary, copy, clock.monotonic() - started, target)

    async def _copy_async(
        self, job: _Job, primary: Answer, answer_of: AnswerOf | None, send: Callable[[], Awaitable[Any]], target: str
    ) -> None:
        _order.set(CopyOrder(self))
        started = clock.monotonic()
        try:
            copy = self._answer(await send(), answer_of)
        except asyncio.CancelledError:
            job.settle(ShadowEvent(self.service.config.name, "skipped", self.stage, reason="the copy was cancelled"))
            raise
        except Exception as exc:
            copy = failed(exc)
        self._settle(job, primary, copy, clock.monotonic() - started, target)

    def _answer(self, response: Any, answer_of: AnswerOf | None) -> Answer:
        if isinstance(response, Answer):
            return response
        answer = answer_of(response, self.service.config.shadow.compare_headers) if answer_of is not None else None
        return answer if answer is not None else Answer(error="the copy's response could not be read")

    def _settle(self, job: _Job, primary: Answer, copy: Answer, elapsed: float, target: str) -> None:
        """Compare, report and count (never raises: this runs where nobody would see it)."""
        service, run = self.service, self.run
        name = service.config.name
        event = ShadowEvent(name, "error", self.stage, run.method, target)
        try:
            shadow = service.config.shadow
            comparison = compare(
                decoded(primary), decoded(copy), ignore_json=shadow.ignore_json, compare_headers=shadow.compare_headers
            )
            failed_routes = tuple(r for r, a in ((run.route, primary), (self.route, copy)) if a.error is not None)
            event = dataclasses.replace(
                event, result=comparison.outcome, comparison=comparison, failed_routes=failed_routes
            )
            if comparison.outcome == "mismatch":
                service.log.mismatch(
                    comparison,
                    method=run.method,
                    target=target,
                    stage=self.stage,
                    primary=run.route,
                    request_id=dict(run.context_headers).get(REQUEST_ID_HEADER, "-"),
                )
            if self.runner._track:
                track_migration(
                    self.runner._router,
                    name,
                    latencies={self.route: elapsed, run.route: job.elapsed},
                    failed=failed_routes,
                    consistent=None if comparison.outcome == "error" else comparison.matched,
                )
        except Exception:  # pragma: no cover - a bug in reporting must not leak the copy's slot
            log.exception("mesh_client: reporting a shadow copy failed")
        finally:
            job.settle(event)


def _cancelled(future: Future[None], job: _Job) -> None:
    if future.cancelled():  # (the pool shut down before it ran)
        job.settle(ShadowEvent(job.service.config.name, "skipped", job.stage, reason="the mesh closed first"))


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def drain_all(timeout: float = 5.0) -> bool:
    """:meth:`ShadowRunner.drain` for every mesh in the process (the test fake uses it)."""
    until = time.monotonic() + timeout
    return all(runner.drain(max(0.0, until - time.monotonic())) for runner in list(_runners))
