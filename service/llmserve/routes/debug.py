"""POST /debug/fault: fault injection, only with `--enable-fault-injection` (testing).

`{"count": n}` makes the next n forward passes raise; `"stage"` picks another stage
(prefill, merge, decode, compact, sampling), `"request_id"` limits the fault to steps
that touch that request, `"stall_s"` stalls the engine instead of raising, and
`{"release": true}` ends a stall.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request

from llmserve.engine import ARMABLE
from llmserve.errors import APIError
from llmserve.lifecycle import authenticate
from llmserve.routes.common import service

router = APIRouter()


def _number(data: dict[str, Any], key: str, default: float, high: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise APIError(400, f"'{key}' must be a number.", param=key)
    return min(max(float(value), 0.0), high)


@router.post("/debug/fault", include_in_schema=False)
async def fault(request: Request) -> dict[str, Any]:
    state = service(request)
    authenticate(state, request)
    try:
        data = json.loads(await request.body() or b"{}")
    except (ValueError, RecursionError) as exc:
        raise APIError(400, "Request body is not valid JSON.") from exc
    if not isinstance(data, dict):
        raise APIError(400, "Request body must be a JSON object.")
    engine = state.engine
    if engine is None:
        raise APIError(503, "Model is not ready.")
    if data.get("release"):
        engine.faults.release()
        return {"released": True}
    stage = data.get("stage", "forward")
    if stage not in ARMABLE:
        raise APIError(400, f"'stage' must be one of {', '.join(ARMABLE)}.", param="stage")
    request_id = data.get("request_id")
    if request_id is not None and not isinstance(request_id, str):
        raise APIError(400, "'request_id' must be a string.", param="request_id")
    count = int(_number(data, "count", 1, 1000))
    stall_s = _number(data, "stall_s", 0.0, 600.0)
    engine.faults.arm(stage, count, stall_s=stall_s, request_id=request_id)
    return {"armed": count, "stage": stage, "stall_s": stall_s}
