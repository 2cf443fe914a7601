"""Request bodies from bytes to validated models; every failure is a 400 naming the field.

Before pydantic sees it, a body must be UTF-8 JSON (no NaN or Infinity), nest at most
`MAX_DEPTH` levels, hold only finite numbers and only text that is valid Unicode (no
unpaired surrogates, which `\\ud800` escapes can smuggle in). Messages name fields and
state rules; they never quote the input, and a field name the client made up is named
only when it is a plain identifier.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any, TypeVar

from pydantic import ValidationError

from llmserve.errors import APIError
from llmserve.protocol import FIELD_NAMES, StrictModel
from llmserve.unsupported import UNSUPPORTED

MAX_DEPTH = 32
_SAFE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
_SURROGATE = re.compile("[\ud800-\udfff]")

M = TypeVar("M", bound=StrictModel)


class _NotJSON(ValueError):
    """NaN, Infinity or -Infinity: Python's json accepts them, JSON does not."""


def _reject_constant(name: str) -> Any:
    raise _NotJSON(name)


def _bad_json(detail: str) -> APIError:
    return APIError(400, f"Request body is not valid JSON: {detail}", code="invalid_json")


def parse_body(raw: bytes, model: type[M]) -> M:
    """Decode, check and validate a body; raise `APIError` (400) on any problem."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise APIError(400, "Request body is not valid UTF-8.", code="invalid_json") from exc
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except RecursionError as exc:
        raise _bad_json("it nests too deeply.") from exc
    except json.JSONDecodeError as exc:
        raise _bad_json(f"{exc.msg} (line {exc.lineno}, column {exc.colno}).") from exc
    except _NotJSON as exc:
        raise _bad_json("NaN and Infinity are not JSON numbers.") from exc
    except ValueError as exc:  # an integer with more digits than Python converts
        raise _bad_json("a number has too many digits.") from exc
    if not isinstance(data, dict):
        raise APIError(400, "Request body must be a JSON object.", code="invalid_json")
    _scan(data)
    try:
        req = model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc.errors(include_url=False, include_input=False)) from exc
    req.check()
    return req


def _scan(data: dict[str, Any]) -> None:
    """Depth, finite numbers and valid Unicode, everywhere in the body (no recursion)."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if len(path) > MAX_DEPTH:
            top = _param(path[:1])
            raise APIError(400, f"Request body nests more than {MAX_DEPTH} levels deep.", param=top)
        if isinstance(value, str):
            if _SURROGATE.search(value):
                raise _invalid(path, "the text is not valid Unicode (an unpaired surrogate)")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise _invalid(path, "the number is out of range")
        elif isinstance(value, dict):
            for key, item in value.items():
                if _SURROGATE.search(key):
                    raise _invalid(path, "a field name is not valid Unicode")
                stack.append((item, (*path, key)))
        elif isinstance(value, list):
            stack.extend((item, (*path, i)) for i, item in enumerate(value))


def _invalid(path: tuple[str | int, ...], why: str) -> APIError:
    param = _param(path)
    return APIError(400, f"Invalid value for '{param or 'body'}': {why}.", param=param)


def _param(path: Iterable[str | int]) -> str | None:
    """`path` as a dotted param, up to the first part that is not a plain name or index."""
    parts: list[str] = []
    for part in path:
        if isinstance(part, int) or _SAFE_NAME.match(part):
            parts.append(str(part))
        else:
            break
    return ".".join(parts) or None


def _known(loc: Iterable[str | int]) -> list[str | int]:
    """The parts of a pydantic error location that are field names or list indexes.

    Drops union member tags (`str`, `list[int]`, ...) and keys of free-form objects.
    """
    return [p for p in loc if isinstance(p, int) or p in FIELD_NAMES]


def _located(error: dict[str, Any]) -> tuple[str | None, bool]:
    """(param, named): named is False for an unknown field whose name is not shown."""
    loc = [p for p in error.get("loc", ()) if p != "body"]
    if error.get("type") == "extra_forbidden" and loc:
        *parent, name = loc
        prefix = _known(parent)
        if isinstance(name, str) and _SAFE_NAME.match(name):
            return _param([*prefix, name]), True
        return _param(prefix), False
    return _param(_known(loc)), True


def _rank(error: dict[str, Any]) -> tuple[int, int]:
    kind = error.get("type")
    first = 0 if kind == UNSUPPORTED else 1 if kind == "extra_forbidden" else 2
    return first, -len(_known(error.get("loc", ())))


def validation_error(errors: Iterable[Any]) -> APIError:
    """Turn pydantic (or FastAPI) validation errors into one 400 naming the parameter."""
    errors = list(errors)
    if not errors:
        return APIError(400, "Invalid request.")
    best = min(errors, key=_rank)
    param, named = _located(best)
    kind = best.get("type")
    where = param or "body"
    if kind == UNSUPPORTED:
        hint = str(best.get("msg", ""))
        message = f"Unsupported value for '{where}': {hint}."
        return APIError(400, message, param=param, code=UNSUPPORTED)
    if kind == "extra_forbidden":
        if named:
            message = f"Unrecognized request argument supplied: '{where}'."
        else:
            message = "Unrecognized request argument supplied (its name is not shown)."
        return APIError(400, message, param=param, code="unknown_parameter")
    if kind == "missing":
        return APIError(400, f"Missing required parameter: '{where}'.", param=param)
    siblings = sum(1 for e in errors if _located(e)[0] == param and e.get("type") != "missing")
    if siblings > 1:
        message = f"Invalid type for '{where}': the value matches none of the accepted types."
    else:
        message = f"Invalid value for '{where}': {best.get('msg', 'invalid value')}."
    return APIError(400, message, param=param)
