"""The call policy: timeouts, retries, retry-on conditions and idempotency.

One frozen :class:`CallPolicy` per service comes from the registry. Per call it is merged with
:class:`CallOptions` (from :func:`call_options` blocks and, for httpx, ``extensions={"mesh": ...}``)
into the policy that call uses. The same policy is compiled two ways: into ``x-envoy-*`` headers on
the Envoy route (:mod:`mesh_client.envoy`) and into the client's own retry loop on the HAProxy route
(:mod:`mesh_client.core`).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import enum
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "DEFAULT_IDEMPOTENT_METHODS",
    "DEFAULT_RETRY_ON",
    "NEVER_SENT_TOKENS",
    "RETRY_ON_TOKENS",
    "UNSET",
    "CallOptions",
    "CallPolicy",
    "Route",
    "Unset",
    "call_options",
]


class Route(str, enum.Enum):
    """Which local proxy a call goes through."""

    ENVOY = "envoy"
    HAPROXY = "haproxy"

    def __str__(self) -> str:
        return self.value


#: Envoy ``x-envoy-retry-on`` tokens mesh_client accepts, because it can give each the same meaning
#: on the HAProxy route, where the client itself retries. (``retriable-headers``, the gRPC and the
#: HTTP/3 tokens are refused: the client could not enforce them the same way.)
RETRY_ON_TOKENS: Final = frozenset(
    {
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "refused-stream",
        "retriable-4xx",
        "retriable-status-codes",
        "envoy-ratelimited",
    }
)

#: Tokens whose failures prove the request never reached the upstream: safe for every method.
NEVER_SENT_TOKENS: Final = frozenset({"connect-failure", "refused-stream", "reset-before-request"})

DEFAULT_RETRY_ON: Final = ("connect-failure", "refused-stream", "reset-before-request")
DEFAULT_IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
DEFAULT_TIMEOUT: Final = 1.0
DEFAULT_RETRIES: Final = 1
#: Envoy refuses ``x-envoy-max-retries`` values it cannot parse; keep them sane.
MAX_RETRIES: Final = 10


#: The longest duration anything accepts: a day. Socket timeouts stop near 3e9 s and Envoy's route
#: timeout is a protobuf Duration; no mesh call should wait that long anyway.
MAX_SECONDS: Final = 86_400


def check_seconds(value: object, what: str, *, allow_none: bool = False) -> float | None:
    """Validate a duration in seconds: a finite number > 0 (or None when allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number of seconds, got {value!r}")
    seconds = float(value)
    if math.isnan(seconds) or math.isinf(seconds):
        raise ValueError(f"{what} must be a finite number of seconds, got {value!r}")
    if seconds <= 0:
        raise ValueError(f"{what} must be greater than 0 seconds, got {value!r}")
    if seconds > MAX_SECONDS:  # beyond what sockets and Envoy's route timeout accept
        raise ValueError(f"{what} must be at most {MAX_SECONDS} seconds (a day), got {value!r}")
    return seconds


def check_retries(value: object, what: str = "retries") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    if not 0 <= value <= MAX_RETRIES:
        raise ValueError(f"{what} must be between 0 and {MAX_RETRIES}, got {value!r}")
    return value


def check_retry_on(value: object, what: str = "retry_on") -> tuple[str, ...]:
    if isinstance(value, str):
        value = [t for t in value.split(",") if t.strip()]
    if not isinstance(value, (list, tuple, frozenset, set)):
        raise ValueError(f"{what} must be a list of Envoy retry-on tokens, got {value!r}")
    tokens: list[str] = []
    for token in value:
        if not isinstance(token, str) or token.strip() not in RETRY_ON_TOKENS:
            known = ", ".join(sorted(RETRY_ON_TOKENS))
            raise ValueError(f"{what}: unknown retry-on token {token!r} (known: {known})")
        if token.strip() not in tokens:
            tokens.append(token.strip())
    return tuple(tokens)


def check_status_codes(value: object, what: str = "retriable_status_codes") -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{what} must be a list of HTTP status codes, got {value!r}")
    codes: list[int] = []
    for code in value:
        if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
            raise ValueError(f"{what}: {code!r} is not an HTTP status code")
        codes.append(code)
    return tuple(codes)


def check_methods(value: object, what: str = "idempotent_methods") -> frozenset[str]:
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise ValueError(f"{what} must be a list of method names, got {value!r}")
    methods = set()
    for m in value:
        if not isinstance(m, str) or not m or not m.strip() == m:
            raise ValueError(f"{what}: {m!r} is not a method name")
        methods.add(m)
    return frozenset(methods)


@dataclass(frozen=True, slots=True)
class CallPolicy:
    """How one call to a service behaves. Immutable; derive variants with :meth:`new`.

    - ``timeout``: seconds for the whole call, retries and back-off included.
    - ``per_try_timeout``: seconds for each attempt, or None. Ignored when not below ``timeout``
      (as Envoy does).
    - ``retries``: extra attempts allowed for failures that match ``retry_on``.
    - ``retry_on``: Envoy retry-on tokens (see :data:`RETRY_ON_TOKENS`).
    - ``retriable_status_codes``: statuses retried under ``retriable-status-codes``.
    - ``idempotent_methods``: methods that may be retried after the request may have reached
      the upstream. Other methods are retried only when every ``retry_on`` token proves the
      request was never sent (:data:`NEVER_SENT_TOKENS`); otherwise not at all.
    """

    timeout: float = DEFAULT_TIMEOUT
    per_try_timeout: float | None = None
    retries: int = DEFAULT_RETRIES
    retry_on: tuple[str, ...] = DEFAULT_RETRY_ON
    retriable_status_codes: tuple[int, ...] = ()
    idempotent_methods: frozenset[str] = DEFAULT_IDEMPOTENT_METHODS

    def __post_init__(self) -> None:
        # store the cleaned-up values: a string retry_on becomes a tuple, lists become tuples/sets
        object.__setattr__(self, "timeout", check_seconds(self.timeout, "timeout"))
        object.__setattr__(
            self, "per_try_timeout", check_seconds(self.per_try_timeout, "per_try_timeout", allow_none=True)
        )
        check_retries(self.retries)
        object.__setattr__(self, "retry_on", check_retry_on(self.retry_on))
        object.__setattr__(self, "retriable_status_codes", check_status_codes(self.retriable_status_codes))
        object.__setattr__(self, "idempotent_methods", check_methods(self.idempotent_methods))

    def new(self, **changes: object) -> CallPolicy:
        """A copy with ``changes`` applied (validated, like the constructor)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def retry_tokens_for(self, method: str, idempotent: bool | None = None) -> tuple[str, ...]:
        """The retry-on tokens that apply to one call of ``method``.

        Idempotent calls keep every token. Others keep them only if all of them prove the
        request was never sent; otherwise they get none (no retry at all).
        """
        if self.retries == 0:
            return ()
        if idempotent is None:
            idempotent = method in self.idempotent_methods
        if idempotent or all(t in NEVER_SENT_TOKENS for t in self.retry_on):
            return self.retry_on
        return ()


class Unset(enum.Enum):
    """The type of :data:`UNSET`: a :class:`CallOptions` field not given (it keeps the registry's
    value). Test for it with ``options.timeout is UNSET``."""

    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = Unset.UNSET
_Unset = Unset  # (its earlier, private name)


@dataclass(frozen=True, slots=True)
class CallOptions:
    """Per-call overrides of a service's :class:`CallPolicy`. Fields left ``UNSET`` keep the
    registry's value; ``per_try_timeout=None`` switches the per-try timeout off.

    - ``idempotent``: declare this call safe (True) or unsafe (False) to retry whatever its
      method; unset means "decide by the method".
    - ``route``: force ``"envoy"`` or ``"haproxy"`` for this call, bypassing the flag.
    """

    timeout: float | Unset = UNSET
    per_try_timeout: float | Unset | None = UNSET
    retries: int | Unset = UNSET
    retry_on: tuple[str, ...] | Unset = UNSET
    retriable_status_codes: tuple[int, ...] | Unset = UNSET
    idempotent: bool | Unset = UNSET
    route: Route | Unset = UNSET

    def __post_init__(self) -> None:
        if self.timeout is not UNSET:
            object.__setattr__(self, "timeout", check_seconds(self.timeout, "timeout"))
        if self.per_try_timeout is not UNSET:
            value = check_seconds(self.per_try_timeout, "per_try_timeout", allow_none=True)
            object.__setattr__(self, "per_try_timeout", value)
        if self.retries is not UNSET:
            check_retries(self.retries)
        if self.retry_on is not UNSET:
            object.__setattr__(self, "retry_on", check_retry_on(self.retry_on))
        if self.retriable_status_codes is not UNSET:
            codes = check_status_codes(self.retriable_status_codes)
            object.__setattr__(self, "retriable_status_codes", codes)
        if self.idempotent is not UNSET and not isinstance(self.idempotent, bool):
            raise ValueError(f"idempotent must be True or False, got {self.idempotent!r}")
        if self.route is not UNSET:
            try:
                object.__setattr__(self, "route", Route(self.route))
            except ValueError:
                raise ValueError(f"route must be 'envoy' or 'haproxy', got {self.route!r}") from None

    def merged(self, other: CallOptions) -> CallOptions:
        """These options overridden by the fields ``other`` sets."""
        changes = {
            f.name: getattr(other, f.name) for f in dataclasses.fields(other) if getattr(other, f.name) is not UNSET
        }
        return dataclasses.replace(self, **changes) if changes else self

    def apply(self, policy: CallPolicy) -> CallPolicy:
        """``policy`` with these overrides (``idempotent`` and ``route`` are not policy fields)."""
        changes = {
            name: getattr(self, name)
            for name in ("timeout", "per_try_timeout", "retries", "retry_on", "retriable_status_codes")
            if getattr(self, name) is not UNSET
        }
        return policy.new(**changes) if changes else policy


NO_OPTIONS: Final = CallOptions()
_current: contextvars.ContextVar[CallOptions] = contextvars.ContextVar("mesh_client.call_options", default=NO_OPTIONS)


#: ``current_options()``: the options of the innermost :func:`call_options` block (empty outside
#: any). The context variable's own ``get`` (asked on every call: no Python frame of its own).
current_options: Final[Callable[[], CallOptions]] = _current.get


@contextlib.contextmanager
def call_options(
    *,
    timeout: float | Unset = UNSET,
    per_try_timeout: float | Unset | None = UNSET,
    retries: int | Unset = UNSET,
    retry_on: Iterable[str] | Unset = UNSET,
    retriable_status_codes: Iterable[int] | Unset = UNSET,
    idempotent: bool | Unset = UNSET,
    route: Route | Literal["envoy", "haproxy"] | Unset = UNSET,
) -> Iterator[CallOptions]:
    """Override the call policy for every mesh call made inside the block.

    Blocks nest (inner values win) and follow contextvars, so threads and asyncio tasks each see
    their own. Bad values raise ``ValueError`` here, before anything is sent::

        with mesh_client.call_options(timeout=0.5, retries=0):
            session.get("http://users/v1/users/1")
    """
    options = CallOptions(
        timeout=timeout,
        per_try_timeout=per_try_timeout,
        retries=retries,
        retry_on=retry_on if isinstance(retry_on, (str, _Unset)) else tuple(retry_on),  # type: ignore[arg-type]
        retriable_status_codes=(
            tuple(retriable_status_codes) if not isinstance(retriable_status_codes, _Unset) else UNSET
        ),
        idempotent=idempotent,
        route=route,  # type: ignore[arg-type]  # validated and converted by CallOptions
    )
    token = _current.set(_current.get().merged(options))
    try:
        yield options
    finally:
        _current.reset(token)
