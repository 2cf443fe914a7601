"""`Only`: a field the service does not implement accepts only the values that leave it off.

`frequency_penalty: Annotated[float | None, Only(is_zero, "only 0 is accepted")]` keeps the
field's type (a wrong type is still a 400 naming it) and turns any other value into a 400
with the error type `unsupported_parameter`. `null` is always accepted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

UNSUPPORTED = "unsupported_parameter"


@dataclass(frozen=True)
class Only:
    accepts: Callable[[Any], bool]
    hint: str

    def _check(self, value: Any) -> Any:
        if value is None or self.accepts(value):
            return value
        raise PydanticCustomError(UNSUPPORTED, "{hint}", {"hint": self.hint})

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema["description"] = self.hint[:1].upper() + self.hint[1:] + "."
        return json_schema


def is_zero(value: float) -> bool:
    return value == 0


def is_false(value: bool) -> bool:
    return value is False


def is_empty(value: Any) -> bool:
    return len(value) == 0


def is_one(value: int) -> bool:
    return value == 1


def never(value: Any) -> bool:
    return False


def one_of(*accepted: Any) -> Callable[[Any], bool]:
    def accepts(value: Any) -> bool:
        return value in accepted

    return accepts
