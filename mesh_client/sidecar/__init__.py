"""Local sidecars for a registry: render Envoy and HAProxy configs, run the real processes.

Used by the examples, the tests, the pytest fixtures and the command line. In production the
mesh's control plane owns these configs; the renderings here are the reference for what the
client needs from them (above all Envoy's internal-address settings).
"""

from .process import (
    SidecarProcess,
    envoy_binary,
    free_port,
    haproxy_binary,
    interrupts_held,
    start_envoy,
    start_haproxy,
)
from .render import envoy_bootstrap, envoy_bootstrap_json, haproxy_config

__all__ = [
    "SidecarProcess",
    "envoy_binary",
    "envoy_bootstrap",
    "envoy_bootstrap_json",
    "free_port",
    "haproxy_binary",
    "haproxy_config",
    "interrupts_held",
    "start_envoy",
    "start_haproxy",
]
