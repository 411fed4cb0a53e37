"""What every check of ``mesh-client doctor`` shares: the result type and the run's context."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = ["DEFAULT_TIMEOUT", "RENDER_HINT", "Check", "Context", "Verdict", "exit_code"]

#: Seconds each network step may take (``--timeout``).
DEFAULT_TIMEOUT: Final = 2.0
Verdict = Literal["OK", "WARN", "FAIL", "SKIP"]
RENDER_HINT: Final = "`mesh-client render envoy MESH.toml` prints a reference bootstrap"


@dataclass(frozen=True, slots=True)
class Check:
    """One check's result: ``verdict`` is ``OK``, ``WARN``, ``FAIL`` or ``SKIP``."""

    name: str
    verdict: Verdict
    detail: str
    fix: str = ""

    def line(self) -> str:
        """The check as the one line the command prints."""
        text = f"{self.verdict:<4}  {self.name:<20} {self.detail}"
        if self.fix and self.verdict != "OK":
            text += f" -> fix: {self.fix}"
        return text


def exit_code(checks: list[Check]) -> int:
    """1 when any check failed, else 0."""
    return 1 if any(c.verdict == "FAIL" for c in checks) else 0


@dataclass
class Context:
    """One doctor run: what it was asked (registry path, timeout, probe path), where results go
    (``emit`` sees each as it is made), the results so far, and what earlier checks found."""

    registry: str
    timeout: float
    path: str
    emit: Callable[[Check], None]
    checks: list[Check] = field(default_factory=list)
    #: the IP the egress address resolved to (for matching Envoy's listener)
    egress_ip: str = ""

    def check(self, name: str, verdict: Verdict, detail: str, fix: str = "") -> Check:
        """Record one result and emit it."""
        return self.add(Check(name, verdict, detail, fix))

    def add(self, result: Check) -> Check:
        """Record a result made elsewhere and emit it."""
        self.checks.append(result)
        self.emit(result)
        return result

    def failed(self) -> set[str]:
        """The names of the checks that failed so far."""
        return {c.name for c in self.checks if c.verdict == "FAIL"}
