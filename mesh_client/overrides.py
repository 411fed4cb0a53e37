"""Routing overrides: send one request's calls, hop after hop, to a variant of a service.

::

    with mesh_client.route_overrides({"users": "canary"}):   # nested blocks merge; the inner one wins
        session.get("http://users/v1/x")                    # -> users' canary, on either route
        mesh_client.current_overrides()                      # {"users": "canary"}

While overrides are in force, every mesh call carries them in one header, ``x-mesh-override:
users=canary;search=pr-12`` (a THeader header for Thrift), so the next hop's middleware picks them
up and applies them to its own calls. A later entry for the same service wins, as in Finagle's
Dtabs. How a call to an overridden service is routed is :mod:`mesh_client.steering`'s; which
inbound overrides a service honours is the ``[overrides]`` table's (:func:`admit_inbound`).

Signed overrides (``[overrides] secret_env``): ``x-mesh-override-signature: exp=EXPIRY;v1=HEX``,
where ``EXPIRY`` is a Unix time in whole seconds and ``HEX`` the lower-case hex HMAC-SHA256, keyed
with the secret, of ``mesh-override-v1\\nEXPIRY\\nVALUE`` (``VALUE``: the ``x-mesh-override``
value exactly as sent). :func:`sign_overrides` makes both headers. See docs/overrides.md for the
format, the trust model and the threats it answers.

Everything here is pure but the context variable, the key read from the environment and the
counters; nothing here raises because of an inbound header.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import hmac
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any, Final

from . import clock as _clock
from .errors import InvalidOverride
from .variants import NAME_PATTERN, OverridesConfig

__all__ = [
    "DEFAULT_SIGNATURE_TTL",
    "MAX_HEADER_LENGTH",
    "MAX_OVERRIDES",
    "MAX_SIGNATURE_TTL",
    "OVERRIDE_HEADER",
    "OVERRIDE_SIGNATURE_HEADER",
    "VARIANT_HEADER",
    "Overrides",
    "admit_inbound",
    "current_overrides",
    "format_override_header",
    "parse_override_header",
    "route_overrides",
    "sign_overrides",
    "signature",
    "verify_signature",
]

log = logging.getLogger("mesh_client.overrides")

#: The overrides in force, carried by every outbound mesh call while there are any.
OVERRIDE_HEADER: Final = "x-mesh-override"
#: The signature of :data:`OVERRIDE_HEADER` (see the module documentation).
OVERRIDE_SIGNATURE_HEADER: Final = "x-mesh-override-signature"
#: Set on a call that goes to a variant; the rendered Envoy config routes it to the variant's cluster.
VARIANT_HEADER: Final = "x-mesh-variant"

#: At most this many overrides (services) in one header.
MAX_OVERRIDES: Final = 16
#: The longest ``x-mesh-override`` value sent or accepted, in characters.
MAX_HEADER_LENGTH: Final = 1024
#: How long a signature :func:`sign_overrides` makes (and a hop's own re-signing) stays valid, s.
DEFAULT_SIGNATURE_TTL: Final = 300.0
#: A signature whose expiry lies further ahead than this (seconds) is refused: no everlasting tokens.
MAX_SIGNATURE_TTL: Final = 86_400.0
#: A key shorter than this (bytes) is refused, as if none were set.
MIN_KEY_LENGTH: Final = 16
_MAX_SIGNATURE_LENGTH: Final = 256
_SIGNED_PREFIX: Final = b"mesh-override-v1\n"


class Overrides:
    """An immutable set of overrides in force: service name -> variant name, in order.

    ``header`` is the ``x-mesh-override`` value sent on (for overrides read from an inbound
    request: the value as received, so a signature over it stays valid); ``signature`` the
    ``x-mesh-override-signature`` that came with exactly that value, if any; ``expires`` the Unix
    time the overrides' signature runs out (None: not signed), which a hop that re-signs them
    never extends."""

    __slots__ = ("_steering", "expires", "header", "mapping", "signature")

    def __init__(
        self, mapping: Mapping[str, str], header: str, signature: str | None = None, expires: float | None = None
    ) -> None:
        self.mapping: Mapping[str, str] = mapping
        self.header = header
        self.signature = signature
        self.expires = expires
        #: what :mod:`mesh_client.steering` worked out for these overrides (per registry)
        self._steering: Any = None

    @classmethod
    def of(cls, overrides: Mapping[str, str], *, expires: float | None = None) -> Overrides:
        """Overrides from a mapping, checked (:class:`InvalidOverride` for a bad name, too many)."""
        pairs = _checked(overrides)
        return cls._made(dict(pairs), expires)

    @classmethod
    def _made(cls, mapping: dict[str, str], expires: float | None) -> Overrides:
        if len(mapping) > MAX_OVERRIDES:
            raise InvalidOverride(f"{len(mapping)} routing overrides; at most {MAX_OVERRIDES} travel in one request")
        header = format_override_header(mapping)
        if len(header) > MAX_HEADER_LENGTH:
            raise InvalidOverride(
                f"the overrides make a {OVERRIDE_HEADER} header of {len(header)} characters; "
                f"at most {MAX_HEADER_LENGTH} are sent"
            )
        return cls(mapping, header, expires=expires)

    def merged(self, inner: Mapping[str, str]) -> Overrides:
        """These overrides with ``inner``'s on top (a later entry wins; it moves to the end)."""
        pairs = _checked(inner)
        if not pairs:
            return self
        mapping = {s: v for s, v in self.mapping.items() if s not in inner}
        mapping.update(pairs)
        return self._made(mapping, self.expires)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Overrides) and dict(self.mapping) == dict(other.mapping)

    def __hash__(self) -> int:
        return hash(tuple(self.mapping.items()))

    def __repr__(self) -> str:
        return f"Overrides({self.header!r})"


def _checked(overrides: Mapping[str, str]) -> list[tuple[str, str]]:
    if not isinstance(overrides, Mapping):
        raise InvalidOverride(
            f"routing overrides must be a mapping of service name to variant name, got {type(overrides).__name__}"
        )
    pairs = []
    for service, variant in overrides.items():
        if not isinstance(service, str) or not NAME_PATTERN.match(service):
            raise InvalidOverride(f"{service!r} is not a service name (lowercase letters, digits, '.', '-', '_')")
        if not isinstance(variant, str) or not NAME_PATTERN.match(variant):
            raise InvalidOverride(
                f"override {service}={variant!r}: {variant!r} is not a variant name "
                "(lowercase letters, digits, '.', '-', '_'; at most 63)"
            )
        pairs.append((service, variant))
    return pairs


# -- the header: pure --------------------------------------------------------------------------------


def format_override_header(overrides: Mapping[str, str]) -> str:
    """The ``x-mesh-override`` value for ``overrides``: ``users=canary;search=pr-12``."""
    return ";".join(f"{service}={variant}" for service, variant in _checked(overrides))


def parse_override_header(value: str) -> dict[str, str]:
    """The overrides of an ``x-mesh-override`` value, in order; a later entry for a service wins
    (and moves to the end). Blanks around entries are allowed; anything else malformed (a bad
    name, an entry without ``=``, an empty entry, too many, too long) raises ValueError."""
    if len(value) > MAX_HEADER_LENGTH:
        raise ValueError(f"{OVERRIDE_HEADER} is {len(value)} characters long; at most {MAX_HEADER_LENGTH}")
    entries = value.split(";")
    if len(entries) > MAX_OVERRIDES:
        raise ValueError(f"{OVERRIDE_HEADER} has {len(entries)} entries; at most {MAX_OVERRIDES}")
    parsed: dict[str, str] = {}
    for entry in entries:
        service, eq, variant = entry.strip(" \t").partition("=")
        if not eq or not NAME_PATTERN.match(service) or not NAME_PATTERN.match(variant):
            raise ValueError(f"{OVERRIDE_HEADER}: {entry!r} is not 'service=variant'")
        parsed.pop(service, None)
        parsed[service] = variant
    return parsed


# -- signing: pure -----------------------------------------------------------------------------------


def signature(value: str, key: bytes, expires: int) -> str:
    """The ``x-mesh-override-signature`` value for the ``x-mesh-override`` value ``value``,
    valid until the Unix time ``expires``."""
    message = b"%s%d\n%s" % (_SIGNED_PREFIX, expires, value.encode("latin-1"))
    return f"exp={expires};v1={hmac.new(key, message, hashlib.sha256).hexdigest()}"


def verify_signature(value: str, signed: str, key: bytes, now: float) -> int:
    """The expiry of a valid signature ``signed`` over ``value``; ValueError saying why it is not
    (``"malformed"``, ``"expired"``, ``"too_long_lived"``, ``"bad_signature"``). The digests are
    compared in constant time."""
    fields = {}
    for part in signed.split(";"):
        name, _, text = part.strip(" \t").partition("=")
        fields[name] = text
    exp_text, digest = fields.get("exp", ""), fields.get("v1", "")
    if not (exp_text.isascii() and exp_text.isdigit() and len(exp_text) <= 12) or len(digest) != 64:
        raise ValueError("malformed")
    expires = int(exp_text)
    if expires <= now:
        raise ValueError("expired")
    if expires > now + MAX_SIGNATURE_TTL:
        raise ValueError("too_long_lived")
    expected = signature(value, key, expires).rpartition("=")[2]
    if not hmac.compare_digest(expected.encode("ascii"), digest.encode("latin-1")):
        raise ValueError("bad_signature")
    return expires


def sign_overrides(
    overrides: Mapping[str, str] | str,
    key: bytes | str,
    *,
    ttl: float = DEFAULT_SIGNATURE_TTL,
    now: float | None = None,
) -> dict[str, str]:
    """Both headers of a signed override, for a tool or an edge proxy that injects one (the
    overrides as a mapping or an ``x-mesh-override`` value; ``key`` the secret of ``secret_env``;
    valid for ``ttl`` seconds, at most :data:`MAX_SIGNATURE_TTL`)::

        headers = mesh_client.overrides.sign_overrides({"users": "canary"}, os.environ["MESH_OVERRIDE_SECRET"])
        requests.get("http://checkout.internal/cart", headers=headers)
    """
    if isinstance(overrides, str):
        value = overrides
        Overrides.of(_parsed_or_invalid(value))  # (the caps on count and length)
    else:
        value = Overrides.of(overrides).header
    secret = key.encode("utf-8") if isinstance(key, str) else key
    if len(secret) < MIN_KEY_LENGTH:
        raise InvalidOverride(f"the signing key must be at least {MIN_KEY_LENGTH} bytes long")
    if not 0 < ttl <= MAX_SIGNATURE_TTL:
        raise InvalidOverride(f"ttl must be more than 0 and at most {MAX_SIGNATURE_TTL:g} seconds, got {ttl!r}")
    expires = int((_clock.wall() if now is None else now) + ttl)
    return {OVERRIDE_HEADER: value, OVERRIDE_SIGNATURE_HEADER: signature(value, secret, expires)}


def _parsed_or_invalid(value: str) -> dict[str, str]:
    try:
        return parse_override_header(value)
    except ValueError as exc:
        raise InvalidOverride(str(exc)) from None


# -- in force: the context variable ------------------------------------------------------------------

_in_force: contextvars.ContextVar[Overrides | None] = contextvars.ContextVar("mesh_client.overrides", default=None)
#: the overrides in force, or None (read once per mesh call)
in_force = _in_force.get


@contextlib.contextmanager
def route_overrides(overrides: Mapping[str, str]) -> Iterator[dict[str, str]]:
    """Steer this block's mesh calls, and every call they cause downstream, to variants:
    ``{"users": "canary"}``. Nested blocks merge, the inner one winning; the overrides of the
    request being handled (when the middleware accepted them) are the outermost. Asyncio tasks
    started inside inherit them; a thread does when started with ``contextvars.copy_context().run``
    (or ``asyncio.to_thread``). Raises :class:`~mesh_client.errors.InvalidOverride` for a bad name
    or too many overrides, before anything is sent. The block's value is the overrides in force
    in it (as :func:`current_overrides` gives them)."""
    current = _in_force.get()
    if current is not None:
        merged: Overrides | None = current.merged(overrides)
    else:
        merged = Overrides.of(overrides) if _checked(overrides) else None  # (none: nothing to send)
    token = _in_force.set(merged)
    try:
        yield dict(merged.mapping) if merged is not None else {}
    finally:
        _in_force.reset(token)


def current_overrides() -> dict[str, str]:
    """The overrides in force here (service -> variant; empty outside any)."""
    current = _in_force.get()
    return dict(current.mapping) if current is not None else {}


def enter_request(overrides: Overrides | None) -> contextvars.Token[Overrides | None]:
    """Make ``overrides`` (a request's accepted inbound ones, or None) the ones in force."""
    return _in_force.set(overrides)


def leave_request(token: contextvars.Token[Overrides | None]) -> None:
    _in_force.reset(token)


# -- inbound: the trust boundary ---------------------------------------------------------------------


def read_key(secret_env: str) -> bytes | None:
    """The signing key from the environment variable ``secret_env`` (None: unset or too short)."""
    value = os.environ.get(secret_env, "")
    key = value.encode("utf-8")
    if len(key) < MIN_KEY_LENGTH:
        log_once(
            f"key:{secret_env}",
            "mesh_client: $%s is %s: overrides are neither verified nor signed (every inbound one is dropped)",
            secret_env,
            "not set" if not value else f"shorter than {MIN_KEY_LENGTH} bytes",
        )
        return None
    return key


def admit_inbound(
    headers: Mapping[str, str], config: OverridesConfig | None, now: float | None = None
) -> Overrides | None:
    """The inbound overrides a service honours (lower-case header names), or None. Dropped
    (logged once per reason, counted), never an error: any override unless ``accept_inbound``;
    a malformed one; with ``secret_env``, one whose signature is missing, malformed, wrong or
    expired."""
    value = headers.get(OVERRIDE_HEADER)
    if value is None:
        return None
    if config is None or not config.accept_inbound:
        _drop("not_accepted", "[overrides] accept_inbound is false")
        return None
    value = value.strip(" \t")
    try:
        mapping = parse_override_header(value)
    except ValueError as exc:
        _drop("malformed", str(exc))
        return None
    signed = headers.get(OVERRIDE_SIGNATURE_HEADER)
    if signed is not None and (len(signed) > _MAX_SIGNATURE_LENGTH or not signed.isascii()):
        signed = None  # (not forwardable; where signatures count it is missing)
    expires: float | None = None
    if config.secret_env is not None:
        key = read_key(config.secret_env)
        if key is None:
            _drop("no_key", f"${config.secret_env} holds no usable key")
            return None
        if signed is None:
            _drop("unsigned", f"no {OVERRIDE_SIGNATURE_HEADER}")
            return None
        try:
            expires = verify_signature(value, signed, key, _clock.wall() if now is None else now)
        except ValueError as exc:
            _drop(str(exc), f"the {OVERRIDE_SIGNATURE_HEADER} is not valid ({exc})")
            return None
    return Overrides(mapping, value, signed, expires)


def _drop(reason: str, why: str) -> None:
    count_dropped(reason)
    log_once(f"drop:{reason}", "mesh_client: an inbound %s was dropped: %s", OVERRIDE_HEADER, why)


_logged: set[str] = set()
_logged_lock: Final = threading.Lock()


def log_once(kind: str, message: str, *args: object) -> None:
    """Log a warning the first time an event of ``kind`` happens (at most 1024 kinds)."""
    with _logged_lock:
        if kind in _logged or len(_logged) >= 1024:
            return
        _logged.add(kind)
    log.warning(message, *args)


# -- counters ----------------------------------------------------------------------------------------


class _Counters:
    """``mesh_client.overrides.dropped`` (inbound overrides refused, by reason) and
    ``mesh_client.overrides.ignored`` (overrides this registry cannot apply, by reason), made on
    first use; nothing is recorded while no meter provider is installed."""

    _lock = threading.Lock()
    dropped: Any = None
    ignored: Any = None

    @classmethod
    def get(cls) -> type[_Counters]:
        if cls.dropped is None:
            with cls._lock:
                if cls.dropped is None:
                    from opentelemetry import metrics

                    from .telemetry import SCHEMA_URL

                    meter = metrics.get_meter("mesh_client", schema_url=SCHEMA_URL)
                    cls.ignored = meter.create_counter(
                        "mesh_client.overrides.ignored",
                        unit="{override}",
                        description="Routing overrides not applied: the service or the variant is not in the registry.",
                    )
                    cls.dropped = meter.create_counter(
                        "mesh_client.overrides.dropped",
                        unit="{request}",
                        description="Inbound x-mesh-override headers dropped at the trust boundary.",
                    )
        return cls


def count_dropped(reason: str) -> None:
    _Counters.get().dropped.add(1, {"mesh.override.reason": reason})


def count_ignored(reason: str, service: str | None) -> None:
    attributes = {"mesh.override.reason": reason}
    if service is not None:
        attributes["mesh.service"] = service
    _Counters.get().ignored.add(1, attributes)
