"""What ``mesh-client call`` shows of one call: the outcome, as text or as one JSON object."""

from __future__ import annotations

import base64
import dataclasses
from dataclasses import dataclass
from typing import Any, TextIO

import requests

from ...errors import combination
from ...info import CallInfo

__all__ = ["Body", "Outcome", "as_json", "class_names", "print_text"]


def class_names(exc: BaseException) -> list[str]:
    """The error's classes: the mesh_client class first, then the wrapped library's own."""
    cls = type(exc)
    classes = list(combination(cls) or [cls])
    names = []
    for c in classes:
        public = c.__module__.startswith("mesh_client") or c.__module__ == "builtins"
        names.append(c.__qualname__ if public else f"{c.__module__}.{c.__qualname__}")
    return names


@dataclass
class Body:
    """A response body as shown: its size, the bytes shown, and the text (None: binary)."""

    size: int
    text: str | None  # None: binary
    shown: bytes
    truncated: bool
    content_type: str

    @classmethod
    def of(cls, content: bytes, content_type: str, limit: int) -> Body:
        """The body of ``content``, cut to ``limit`` bytes (0: no limit)."""
        shown = content if limit <= 0 else content[:limit]
        text: str | None
        try:
            content.decode("utf-8")
            binary = b"\0" in content
        except UnicodeDecodeError:
            binary = True
        text = None if binary else shown.decode("utf-8", errors="ignore")  # a cut may split a character
        return cls(len(content), text, shown, len(shown) < len(content), content_type)


@dataclass
class Outcome:
    """One call's result: a response (with its body) or an error, and the call's info."""

    service: str
    method: str
    path: str
    response: requests.Response | None = None
    body: Body | None = None
    error: BaseException | None = None
    info: CallInfo | None = None

    @property
    def ok(self) -> bool:
        """A response with a status below 400."""
        return self.error is None and self.response is not None and self.response.status_code < 400


def _info_fields(info: CallInfo | None) -> dict[str, Any]:
    if info is None:
        return {}
    fields = dataclasses.asdict(info)
    fields["route"] = info.route.value
    fields["elapsed"] = round(info.elapsed, 6)
    fields.pop("service", None)
    return fields


def as_json(call: Outcome) -> dict[str, Any]:
    """The outcome as the object ``--json`` prints (binary bodies in ``body_base64``)."""
    response, body, error = call.response, call.body, call.error
    result: dict[str, Any] = {
        "service": call.service,
        "method": call.method,
        "path": call.path,
        "ok": call.ok,
        "status": response.status_code if response is not None else None,
        "reason": response.reason if response is not None else None,
        **_info_fields(call.info),
        "headers": dict(response.headers) if response is not None else None,
    }
    result["body_bytes"] = body.size if body is not None else None
    result["body_truncated"] = body.truncated if body is not None else None
    result["body"] = body.text if body is not None else None
    if body is not None and body.text is None:
        result["body_base64"] = base64.b64encode(body.shown).decode("ascii")
    result["error"] = (
        None if error is None else {"type": class_names(error)[0], "classes": class_names(error), "message": str(error)}
    )
    return result


def _seconds_text(value: object) -> str:
    return f"{value:.3f} s" if isinstance(value, float) else "-" if value is None else str(value)


def print_text(out: TextIO, call: Outcome, *, include: bool) -> None:
    """The outcome as text: the request line, one ``name  value`` row per field, the body;
    ``include``: the response headers too."""
    response, body, error = call.response, call.body, call.error
    rows: list[tuple[str, str]] = []
    if response is not None:
        rows.append(("status", f"{response.status_code} {response.reason or ''}".rstrip()))
    if error is not None:
        names = class_names(error)
        also = f" (also {', '.join(names[1:])})" if len(names) > 1 else ""
        rows.append(("error", f"{names[0]}{also}: {error}"))
    for key, value in _info_fields(call.info).items():
        if key in ("elapsed", "upstream_service_time"):
            text = _seconds_text(value)
        elif isinstance(value, bool):
            text = "yes" if value else "no"
        else:
            text = "-" if value is None else str(value)
        rows.append((key, text))
    print(f"{call.method} http://{call.service}{call.path}", file=out)
    width = max(len(k) for k, _ in rows) + 2
    for key, text in rows:
        print(f"  {key:<{width}}{text}", file=out)
    if response is not None and include:
        print("  headers", file=out)
        for name, value in response.headers.items():
            print(f"    {name}: {value}", file=out)
    if body is None:
        return
    kind = f", {body.content_type}" if body.content_type else ""
    if body.size == 0:
        print(f"  {'body':<{width}}empty{kind}", file=out)
        return
    if body.text is None:
        print(f"  {'body':<{width}}{body.size} bytes of binary data{kind} (not shown; --json shows base64)", file=out)
        return
    cut = f"; first {len(body.shown)} shown, --max-body 0 shows all" if body.truncated else ""
    print(f"  {'body':<{width}}{body.size} bytes{kind}{cut}", file=out)
    text = body.text if body.text.endswith("\n") else body.text + "\n"
    out.write(text + ("[...]\n" if body.truncated else ""))
