"""What a registry that loads must survive, shared by the Hypothesis tests and the atheris harness:
rendering both sidecars' configs and starting a call to each service on each route."""

from __future__ import annotations

from mesh_client.budget import RetryBudget
from mesh_client.circuit import SidecarCircuit
from mesh_client.core import Attempt, CallRun, Fail, ServicePlan
from mesh_client.policy import Route
from mesh_client.registry import MeshConfig
from mesh_client.sidecar.render import envoy_bootstrap, haproxy_config

#: Durations above this load but cannot be used: socket timeouts overflow (a known limit, see
#: tests/unit/test_fuzz.py::test_a_timeout_no_socket_can_take_is_refused_when_loaded).
MAX_USABLE_SECONDS = 1e9


def use(config: MeshConfig) -> None:
    """Render the sidecars for ``config`` and start a call to every service on both routes."""
    if config.envoy_admin is not None:
        envoy_bootstrap(config)
    haproxy_config(config)
    for service in config.services.values():
        if service.policy.timeout > MAX_USABLE_SECONDS:
            continue
        thrift = service.protocol == "thrift"
        for route in Route:
            plan = ServicePlan.of(
                config,
                service,
                envoy_address=config.envoy_thrift if thrift else None,
                envoy_enforces=not thrift,
                budget=RetryBudget(service.retry_budget),
                circuit=SidecarCircuit(),
            )
            run: CallRun[object] = CallRun(plan, "get_user" if thrift else "GET", service.policy, route, "fuzz")
            step = run.advance(None)
            if not isinstance(step, (Attempt, Fail)):
                raise AssertionError(f"the first step of a call is an attempt or a failure, got {step!r}")
