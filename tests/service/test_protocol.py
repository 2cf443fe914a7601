"""Strict OpenAI compatibility, in process: every request field is honoured or a 400 naming
it, no input is a 500, errors never quote the input, and the OpenAPI schema has the bodies."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from llmserve.app import create_app
from llmserve.config import Settings
from llmserve.engine import BatchEngine
from llmserve.metrics import Metrics
from llmserve.protocol import ChatCompletionRequest, CompletionRequest
from llmserve.schemas import ChatCompletion, Completion, ErrorResponse, GenerateResponse, ModelList
from llmserve.state import ServiceState

from .conftest import SERVED_NAME

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
BASE: dict[str, dict[str, Any]] = {
    CHAT: {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0},
    COMPLETIONS: {"prompt": "The river", "max_tokens": 2, "temperature": 0},
}
MODELS = {CHAT: ChatCompletionRequest, COMPLETIONS: CompletionRequest}
# Marks input that must never come back in an error message.
RAW = "ZZRAW"


@pytest.fixture(scope="module")
def client(loaded_model) -> Iterator[TestClient]:
    yield from in_process_client(loaded_model)


def in_process_client(loaded_model, **settings_: Any) -> Iterator[TestClient]:
    """The app on a running engine, without a server; `settings_` overrides settings."""
    settings = Settings(
        model="/models/tiny", served_model_name=SERVED_NAME, rate_limit_rps=0, **settings_
    )
    state = ServiceState(settings, Metrics(nvml=False))
    engine = BatchEngine(loaded_model, metrics=state.metrics)
    engine.start()
    state.loaded, state.engine, state.phase = loaded_model, engine, "ready"
    try:
        with TestClient(create_app(state), raise_server_exceptions=False) as test_client:
            yield test_client
    finally:
        engine.stop()


def post(client: TestClient, path: str, body: Any) -> Any:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(path, content=content, headers={"content-type": "application/json"})


def assert_400(resp: Any, param: str | None, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == 400, resp.text
    error = ErrorResponse.model_validate(resp.json()).error
    assert error.type == "invalid_request_error"
    if param is None:
        assert error.param is None, error
    else:
        assert error.param == param or (error.param or "").startswith(param + "."), error
    if code is not None:
        assert error.code == code, error
    assert RAW not in resp.text
    return resp.json()["error"]


# -- every field, every wrong JSON type ------------------------------------------------------------
# One value of each JSON type; the strings and keys carry RAW.
VALUES: dict[str, Any] = {
    "null": None,
    "boolean": True,
    "integer": 7,
    "number": 2.5,
    "string": RAW + "-string",
    "array": [RAW + "-item"],
    "object": {RAW + "-key": RAW + "-value"},
}
OPTIONAL = {"null"}
NUMBER = {"number", "integer"}
_COMMON = {
    "model": {"string"},
    "max_tokens": {"integer"},
    "temperature": NUMBER,
    "top_p": NUMBER,
    "stop": {"string", "array"},
    "seed": {"integer"},
    "n": {"integer"},
    "stream": {"boolean"},
    "stream_options": {"object"},
    "top_k": {"integer"},
    "ignore_eos": {"boolean"},
    "min_tokens": {"integer"},
    "repetition_penalty": NUMBER,
    "user": {"string"},
    "frequency_penalty": NUMBER,
    "presence_penalty": NUMBER,
    "logit_bias": {"object"},
}
# The JSON types each field accepts (besides null, which every optional field takes).
ACCEPTED: dict[str, dict[str, set[str]]] = {
    CHAT: {
        **_COMMON,
        "messages": {"array"},
        "max_completion_tokens": {"integer"},
        "safety_identifier": {"string"},
        "parallel_tool_calls": {"boolean"},
        "logprobs": {"boolean"},
        "top_logprobs": {"integer"},
        "tools": {"array"},
        "tool_choice": {"string", "object"},
        "functions": {"array"},
        "function_call": {"string", "object"},
        "response_format": {"object"},
        "modalities": {"array"},
        "audio": {"object"},
        "prediction": {"object"},
        "web_search_options": {"object"},
        "metadata": {"object"},
        "store": {"boolean"},
        "service_tier": {"string"},
        "reasoning_effort": {"string"},
        "verbosity": {"string"},
        "prompt_cache_key": {"string"},
    },
    COMPLETIONS: {
        **_COMMON,
        "prompt": {"string", "array"},
        "echo": {"boolean"},
        "best_of": {"integer"},
        "logprobs": {"integer"},
        "suffix": {"string"},
    },
}
REQUIRED = {"messages", "prompt"}


def test_the_tables_cover_every_field():
    for path, model in MODELS.items():
        assert set(ACCEPTED[path]) == set(model.model_fields), path


WRONG_TYPES = [
    (path, field, kind)
    for path, fields in ACCEPTED.items()
    for field, kinds in fields.items()
    for kind in VALUES
    if kind not in kinds and not (kind == "null" and field not in REQUIRED)
]


@pytest.mark.parametrize(("path", "field", "kind"), WRONG_TYPES)
def test_wrong_type_is_400_naming_the_field(client, path, field, kind):
    resp = post(client, path, {**BASE[path], field: VALUES[kind]})
    assert_400(resp, field)


@pytest.mark.parametrize(
    ("path", "field"),
    [
        (path, field)
        for path, fields in ACCEPTED.items()
        for field in fields
        if field not in REQUIRED
    ],
)
def test_null_means_the_default(client, path, field):
    resp = post(client, path, {**BASE[path], field: None})
    assert resp.status_code == 200, resp.text


# -- fields the server does not implement -------------------------------------------------------
# (field, a value that turns the feature on: 400, a value that leaves it off: 200)
UNSUPPORTED_COMMON = [
    ("n", 2, 1),
]
UNSUPPORTED: dict[str, list[tuple[str, Any, Any]]] = {
    CHAT: [
        *UNSUPPORTED_COMMON,
        ("tools", [{"type": "function", "function": {"name": "f"}}], []),
        ("tool_choice", "required", "none"),
        ("tool_choice", {"type": "function", "function": {"name": "f"}}, "auto"),
        ("functions", [{"name": "f"}], []),
        ("function_call", {"name": "f"}, "none"),
        ("response_format", {"type": "json_object"}, {"type": "text"}),
        ("response_format", {"type": "json_schema", "json_schema": {"name": "x"}}, None),
        ("logprobs", True, False),
        ("top_logprobs", 3, 0),
        ("audio", {"voice": "alloy", "format": "wav"}, None),
        ("modalities", ["text", "audio"], ["text"]),
        ("prediction", {"type": "content", "content": "x"}, None),
        ("web_search_options", {}, None),
        ("metadata", {"k": "v"}, {}),
        ("store", True, False),
        ("service_tier", "flex", "auto"),
        ("reasoning_effort", "low", None),
        ("verbosity", "low", None),
        ("prompt_cache_key", "key-1", None),
    ],
    COMPLETIONS: [
        *UNSUPPORTED_COMMON,
        ("best_of", 2, 1),
        ("logprobs", 0, None),
        ("suffix", "the end", ""),
    ],
}


@pytest.mark.parametrize(
    ("path", "field", "on", "off"),
    [(path, *case) for path, cases in UNSUPPORTED.items() for case in cases],
)
def test_unimplemented_field_is_400_unless_off(client, path, field, on, off):
    resp = post(client, path, {**BASE[path], field: on})
    error = assert_400(resp, field, "unsupported_parameter")
    assert error["message"].startswith("Unsupported value for '" + error["param"] + "'")
    resp = post(client, path, {**BASE[path], field: off})
    assert resp.status_code == 200, resp.text


MESSAGE_CASES = [
    # (message, param)
    ({"role": "user", "content": "hi", "name": "bob"}, "messages.0.name"),
    ({"role": "tool", "content": "42", "tool_call_id": "call_1"}, "messages.0.role"),
    ({"role": "function", "content": "42", "name": "f"}, "messages.0.role"),
    ({"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]}, "messages.0.tool_calls"),
    ({"role": "assistant", "content": "x", "refusal": "no"}, "messages.0.refusal"),
    ({"role": "assistant", "content": "x", "audio": {"id": "a"}}, "messages.0.audio"),
    (
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
        "messages.0.content.0.type",
    ),
    ({"role": "user", "content": [{"type": "input_audio"}]}, "messages.0.content.0.type"),
]


@pytest.mark.parametrize(("message", "param"), MESSAGE_CASES)
def test_unimplemented_message_fields_are_400(client, message, param):
    body = {**BASE[CHAT], "messages": [message]}
    assert_400(post(client, CHAT, body), param, "unsupported_parameter")


def test_text_parts_and_developer_role_are_honoured(client):
    messages = [
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        {
            "role": "user",
            "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}],
        },
        {"role": "assistant", "content": "Hello", "tool_calls": []},
        {"role": "user", "content": "Again", "name": None},
    ]
    resp = post(client, CHAT, {**BASE[CHAT], "messages": messages})
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (CHAT, {"not_a_field": 1}, "not_a_field"),
        (COMPLETIONS, {"not_a_field": 1}, "not_a_field"),
        (CHAT, {"messages": [{"role": "user", "content": "x", "mood": "y"}]}, "messages.0.mood"),
        (CHAT, {"stream": True, "stream_options": {"zzz": True}}, "stream_options.zzz"),
        (CHAT, {"response_format": {"type": "text", "extra": 1}}, "response_format.extra"),
        (COMPLETIONS, {RAW + "<script>": 1}, None),
        (COMPLETIONS, {RAW + " spaced": 1}, None),
    ],
)
def test_unknown_fields_are_400(client, path, body, param):
    error = assert_400(post(client, path, {**BASE[path], **body}), param, "unknown_parameter")
    if param is not None:
        assert param in error["message"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (CHAT, {"stream_options": {"include_usage": True}}, "stream_options"),
        (CHAT, {"stream": True, "stream_options": {"include_obfuscation": True}}, "stream_options"),
        (CHAT, {"max_tokens": 2, "max_completion_tokens": 3}, "max_completion_tokens"),
        (COMPLETIONS, {"prompt": ["a", "b"]}, "prompt"),
        (COMPLETIONS, {"prompt": [[1, 2], [3]]}, "prompt"),
        (COMPLETIONS, {"prompt": [5, 10**6]}, "prompt"),
        (CHAT, {"model": RAW + "-model"}, "model"),
        (COMPLETIONS, {"logit_bias": {RAW: 1}}, "logit_bias"),
        (COMPLETIONS, {"logit_bias": {"-3": 1}}, "logit_bias"),
        (COMPLETIONS, {"logit_bias": {"99999999": 1}}, "logit_bias"),
        (COMPLETIONS, {"logit_bias": {"1": 101}}, "logit_bias"),
        (COMPLETIONS, {"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias"),
        (COMPLETIONS, {"presence_penalty": 2.5}, "presence_penalty"),
        (COMPLETIONS, {"repetition_penalty": 0}, "repetition_penalty"),
    ],
)
def test_combinations_and_values_the_server_cannot_honour(client, path, body, param):
    resp = post(client, path, {**BASE[path], **body})
    if param == "model":
        assert resp.status_code == 404 and RAW not in resp.text
        return
    assert_400(resp, param)


# -- honoured fields are honoured ----------------------------------------------------------------
HONOURED = {
    CHAT: {
        "model": SERVED_NAME,
        "max_completion_tokens": 2,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 5,
        "seed": 11,
        "stop": ["zz", "yy"],
        "stream": False,
        "user": "end-user-1",
        "safety_identifier": "hashed-id",
        "parallel_tool_calls": False,
        "ignore_eos": True,
        "min_tokens": 1,
        "tool_choice": "none",
        "service_tier": "default",
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "repetition_penalty": 1.2,
        "logit_bias": {"15": 5, "16": -100},
    },
    COMPLETIONS: {
        "model": SERVED_NAME,
        "temperature": 1,
        "top_p": 1,
        "seed": 2**64 - 1,
        "stop": "zz",
        "echo": True,
        "user": "end-user-2",
        "best_of": 1,
        "suffix": "",
    },
}


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_honoured_fields_together(client, path, caplog):
    with caplog.at_level(logging.INFO, logger="llmserve.access"):
        resp = post(client, path, {**BASE[path], **HONOURED[path], "max_tokens": None})
    assert resp.status_code == 200, resp.text
    body = (ChatCompletion if path == CHAT else Completion).model_validate(resp.json())
    assert body.usage.completion_tokens >= 1
    if path == COMPLETIONS:
        assert body.choices[0].text.startswith("The river")  # echo
    users = [getattr(r, "end_user", None) for r in caplog.records]
    assert HONOURED[path]["user"] in users


# -- no input is a 500 ---------------------------------------------------------------------------
def _nested(depth: int, leaf: str = "1") -> bytes:
    return (b'{"a":' * depth) + leaf.encode() + (b"}" * depth)


HOSTILE: list[tuple[str, bytes]] = [
    ("not utf-8", b'{"prompt": "\xff\xfe", "max_tokens": 2}'),
    ("utf-16", '{"prompt": "hi", "max_tokens": 2}'.encode("utf-16")),
    ("latin-1", '{"prompt": "caf\u00e9", "max_tokens": 2}'.encode("latin-1")),
    ("lone surrogate", b'{"prompt": "a\\ud800b", "max_tokens": 2}'),
    ("low surrogate", b'{"messages": [{"role": "user", "content": "\\udfff"}]}'),
    ("surrogate key", b'{"\\ud800": 1, "prompt": "x"}'),
    (
        "surrogate in part",
        b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud834"}]}]}',
    ),
    ("surrogate stop", b'{"prompt": "x", "stop": ["\\ud800"]}'),
    ("NaN", b'{"prompt": "x", "temperature": NaN}'),
    ("Infinity", b'{"prompt": "x", "top_p": Infinity}'),
    ("-Infinity", b'{"prompt": "x", "seed": -Infinity}'),
    ("1e400", b'{"prompt": "x", "max_tokens": 1e400}'),
    ("-1e400", b'{"prompt": "x", "frequency_penalty": -1e400}'),
    ("4000 digits", b'{"prompt": "x", "seed": 1' + b"0" * 4000 + b"}"),
    ("5000 digits", b'{"prompt": "x", "max_tokens": 1' + b"0" * 5000 + b"}"),
    ("huge negative", b'{"prompt": "x", "top_k": -99999999999999999999999}'),
    ("huge token id", b'{"prompt": [1, 99999999999999999999999999999]}'),
    ("negative token id", b'{"prompt": [-1]}'),
    ("huge n", b'{"prompt": "x", "n": 1e300}'),
    ("huge float temperature", b'{"prompt": "x", "temperature": 1e308}'),
    ("tiny top_p", b'{"prompt": "x", "top_p": 1e-320}'),
    ("deep object", _nested(5000)),
    ("deep list", b"[" * 5000 + b"]" * 5000),
    ("deep but parseable", _nested(200)),
    (
        "deep in tools",
        b'{"messages": [{"role": "user", "content": "x"}], "tools": ' + _nested(100) + b"}",
    ),
    (
        "deep in content",
        b'{"messages": [{"role": "user", "content": ' + b"[" * 100 + b"]" * 100 + b"}]}",
    ),
    ("deep in logit_bias", b'{"prompt": "x", "logit_bias": ' + _nested(50) + b"}"),
    ("empty", b""),
    ("whitespace", b"   "),
    ("null", b"null"),
    ("array", b"[]"),
    ("number", b"42"),
    ("duplicate keys", b'{"prompt": "x", "prompt": 5}'),
    ("trailing garbage", b'{"prompt": "x"} {}'),
    ("nul in text", b'{"prompt": "a\\u0000b", "max_tokens": 2}'),
    ("control keys", b'{"\\u0000": 1, "prompt": "x"}'),
]


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS, "/generate"])
@pytest.mark.parametrize(("name", "body"), HOSTILE, ids=[name for name, _ in HOSTILE])
def test_hostile_bodies_are_never_500(client, path, name, body):
    resp = post(client, path, body)
    assert resp.status_code < 500, resp.text
    if resp.status_code >= 400:
        ErrorResponse.model_validate(resp.json())
        assert "\\ud8" not in resp.text and "Traceback" not in resp.text


def test_surrogate_error_names_the_field(client):
    body = (
        b'{"messages": [{"role": "user", "content": "ok"}, {"role": "user", "content": "\\ud800"}]}'
    )
    error = assert_400(post(client, CHAT, body), "messages.1.content")
    assert "Unicode" in error["message"]


# -- the OpenAPI schema ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "request_model", "response_model"),
    [
        (CHAT, "ChatCompletionRequest", "ChatCompletion"),
        (COMPLETIONS, "CompletionRequest", "Completion"),
        ("/generate", "GenerateRequest", "GenerateResponse"),
    ],
)
def test_openapi_names_request_and_response_models(client, path, request_model, response_model):
    schema = client.get("/openapi.json").json()
    operation = schema["paths"][path]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": f"#/components/schemas/{request_model}"}
    ok = operation["responses"]["200"]["content"]
    assert ok["application/json"]["schema"] == {"$ref": f"#/components/schemas/{response_model}"}
    assert operation["responses"]["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }
    components = schema["components"]["schemas"]
    assert components[request_model]["type"] == "object"
    assert components[response_model]["type"] == "object"
    if path != "/generate":
        assert components[request_model]["additionalProperties"] is False
        assert "text/event-stream" in ok
    for ref in set(_refs(schema)):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[-1] in components, ref


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def test_openapi_schema_describes_what_the_server_answers(client):
    chat = post(client, CHAT, BASE[CHAT])
    ChatCompletion.model_validate(chat.json())
    completion = post(client, COMPLETIONS, BASE[COMPLETIONS])
    Completion.model_validate(completion.json())
    generated = post(client, "/generate", {"prompt": "x", "max_tokens": 2})
    GenerateResponse.model_validate(generated.json())
    ModelList.model_validate(client.get("/v1/models").json())
    request_schema = client.get("/openapi.json").json()["components"]["schemas"]
    properties = request_schema["ChatCompletionRequest"]["properties"]
    assert set(properties) == set(ChatCompletionRequest.model_fields)
    assert "does not call tools" in properties["tools"]["description"]


# -- DeepSeek-R1 reasoning output ------------------------------------------------------------------
@pytest.fixture(scope="module")
def r1_client(loaded_model) -> Iterator[TestClient]:
    yield from in_process_client(loaded_model, reasoning_parser="deepseek_r1")


def stream_deltas(client: TestClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    with client.stream(
        "POST", CHAT, json={**body, "stream": True}, headers={"content-type": "application/json"}
    ) as resp:
        assert resp.status_code == 200
        lines = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line)["choices"][0]["delta"] for line in lines[:-1]]


def test_reasoning_content_when_thinking_never_ends(client, r1_client):
    """The tiny model never writes `</think>`: all of its output is reasoning, content null,
    in the full response and in the stream, and it is the text the plain server gives."""
    body = {**BASE[CHAT], "max_tokens": 12, "ignore_eos": True}
    plain = post(client, CHAT, body).json()["choices"][0]["message"]
    resp = post(r1_client, CHAT, body)
    assert resp.status_code == 200, resp.text
    message = ChatCompletion.model_validate(resp.json()).choices[0].message
    assert message.content is None
    assert message.reasoning_content == plain["content"] and plain["content"]
    deltas = stream_deltas(r1_client, body)
    assert "".join(d.get("reasoning_content", "") for d in deltas) == plain["content"]
    assert "".join(d.get("content") or "" for d in deltas) == ""


def test_reasoning_stream_splits_at_the_end_of_thinking():
    from llmserve.routes.openai import _chat_payloads

    content, closing = _chat_payloads(reasoning=True)
    pieces = ["<think>\nLet", " me see </th", "ink>\n\nIt is", " 4.", " </thi"]
    deltas = [d["delta"] for d in map(content, pieces) if d is not None] + [closing()["delta"]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "\nLet me see "
    assert "".join(d.get("content", "") for d in deltas) == "\n\nIt is 4. </thi"
    assert all(set(d) <= {"reasoning_content", "content"} and d for d in deltas[:-1])


# -- penalties and logit bias --------------------------------------------------------------------
def completion_text(client: TestClient, **body: Any) -> str:
    base = {"prompt": "The river", "max_tokens": 6, "temperature": 0, "ignore_eos": True}
    resp = post(client, COMPLETIONS, {**base, **body})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["choices"][0]["text"])


def test_logit_bias_forces_and_bans_tokens(client, loaded_model):
    decode = loaded_model.tokenizer.decode
    forced = 300
    assert completion_text(client, logit_bias={str(forced): 100}) == decode([forced] * 6)
    plain = completion_text(client)
    first = loaded_model.tokenizer.encode(plain, add_special_tokens=False)[0]
    banned = completion_text(client, logit_bias={str(first): -100})
    assert not banned.startswith(decode([first])), (plain, banned)


def test_penalties_change_greedy_output_only_when_asked(client):
    plain = completion_text(client, max_tokens=24)
    assert completion_text(client, max_tokens=24, presence_penalty=0, repetition_penalty=1) == plain
    # The forced token repeats; a frequency penalty past the bias stops the repetition.
    forced = {"logit_bias": {"300": 3.0}, "max_tokens": 24}
    repeated = completion_text(client, **forced)
    assert completion_text(client, **forced, frequency_penalty=2.0) != repeated
