"""Unit tests of the small modules: auth, rate limit, redaction, validation, sampling."""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
import subprocess
import time

import jwt
import pytest
import torch

from llmserve.auth import Authenticator, AuthError
from llmserve.body import parse_body
from llmserve.config import add_serve_arguments, settings_from_args
from llmserve.errors import APIError
from llmserve.params import GenerationDefaults, sampling_params
from llmserve.protocol import CompletionRequest, GenerateRequest
from llmserve.ratelimit import RateLimiter
from llmserve.redact import redact
from llmserve.sampling import BatchSampling, sample
from llmserve.sequence import SamplingParams, Sequence
from llmserve.server import reload_api_keys

SECRET = "unit-secret-" + "0123456789abcdef" * 4


# -- auth -------------------------------------------------------------------------------------
@pytest.fixture
def keys_file(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# comment\nkey-one\n\n  key-two  \n")
    return path


def test_auth_disabled_is_anonymous_per_ip():
    auth = Authenticator()
    assert not auth.enabled
    assert auth.authenticate(None, "10.0.0.1").key == "ip:10.0.0.1"


def test_api_keys_kept_as_digests(keys_file):
    auth = Authenticator(api_keys_file=str(keys_file))
    assert auth.enabled
    assert auth._digests == [hashlib.sha256(k.encode()).digest() for k in ("key-one", "key-two")]
    one = auth.authenticate("Bearer key-one")
    two = auth.authenticate("bearer key-two")
    assert one.kind == "api_key" and one.key != two.key
    for header in (None, "", "Bearer", "Bearer key-three", "Basic key-one", "key-one"):
        with pytest.raises(AuthError):
            auth.authenticate(header)


def test_api_keys_reload(keys_file):
    auth = Authenticator(api_keys_file=str(keys_file))
    keys_file.write_text("key-new\n")
    assert auth.reload() == 1
    auth.authenticate("Bearer key-new")
    with pytest.raises(AuthError):
        auth.authenticate("Bearer key-one")


def test_api_keys_reload_failure_keeps_old_keys(keys_file, caplog):
    auth = Authenticator(api_keys_file=str(keys_file))
    keys_file.write_bytes(b"\xff\xfe not utf-8\n")
    with caplog.at_level(logging.ERROR, logger="llmserve.server"):
        reload_api_keys(auth)  # must not raise out of the signal callback
    assert "cannot reload" in caplog.text
    auth.authenticate("Bearer key-one")
    keys_file.unlink()
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="llmserve.server"):
        reload_api_keys(auth)
    assert "cannot reload" in caplog.text
    auth.authenticate("Bearer key-one")


def _token(alg: str = "HS256", key: str = SECRET, **claims: object) -> str:
    base: dict[str, object] = {"sub": "svc", "aud": "api", "iss": "idp", "exp": time.time() + 60}
    base.update(claims)
    return jwt.encode({k: v for k, v in base.items() if v is not None}, key, algorithm=alg)


def test_jwt(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    auth = Authenticator(jwt_secret_file=str(secret), jwt_audience="api", jwt_issuer="idp")
    assert auth.jwt_algorithm == "HS256"
    principal = auth.authenticate("Bearer " + _token())
    assert principal.kind == "jwt" and principal.key == "jwt:svc"
    bad = [
        _token(exp=time.time() - 60),
        _token(exp=None),
        _token(aud="other"),
        _token(aud=None),
        _token(iss="other"),
        _token(key="another-secret-" + "x" * 64),
        _token(alg="HS384"),
        jwt.encode(
            {"sub": "x", "aud": "api", "iss": "idp", "exp": time.time() + 60},
            None,
            algorithm="none",
        ),
    ]
    for token in bad:
        with pytest.raises(AuthError):
            auth.authenticate("Bearer " + token)


def test_jwt_config_errors(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    with pytest.raises(ValueError):
        Authenticator(jwt_secret_file=str(secret), jwt_algorithm="RS256")
    with pytest.raises(ValueError):
        Authenticator(jwt_public_key_file=str(secret), jwt_algorithm="HS256")


# -- rate limit -------------------------------------------------------------------------------
def test_token_bucket():
    rl = RateLimiter(rate=2.0, burst=3)
    assert [rl.check("a", now=100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = rl.check("a", now=100.0)
    assert wait == pytest.approx(0.5)
    assert RateLimiter.retry_after(wait) == 1
    assert rl.check("b", now=100.0) == 0.0  # separate bucket
    assert rl.check("a", now=100.6) == 0.0  # refilled one token
    assert rl.check("a", now=100.6) > 0


def test_token_bucket_wait_takes_nothing():
    rl = RateLimiter(rate=1.0, burst=2)
    assert rl.wait("a", now=10.0) == 0.0
    rl.check("a", now=10.0)
    rl.check("a", now=10.0)
    assert rl.wait("a", now=10.0) == pytest.approx(1.0)
    assert rl.wait("a", now=10.0) == pytest.approx(1.0)  # looking takes no token
    assert rl.wait("a", now=11.0) == 0.0


def test_token_bucket_disabled_and_bounded():
    assert RateLimiter(rate=0, burst=1).check("x") == 0.0
    rl = RateLimiter(rate=1, burst=1, max_keys=10)
    for i in range(100):
        rl.check(f"k{i}", now=1.0)
    assert len(rl._buckets) == 10


# -- redaction --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to jane.doe+x@mail.example.co.uk now", "write to [EMAIL] now"),
        ("call +1 (555) 123-4567.", "call [PHONE]."),
        ("tel 030 1234 5678 or 0612345678", "tel [PHONE] or [PHONE]"),
        ("+44 20 7946 0958", "[PHONE]"),
        ("I have 3 cats and 12 dogs in 2024", "I have 3 cats and 12 dogs in 2024"),
        ("version 1.2.3", "version 1.2.3"),
        ("pi is 3.14159265 and today is 2024-01-15", "pi is 3.14159265 and today is 2024-01-15"),
        ("card 4111 1111 1111 1111, 4111-1111-1111-1111", "card [CARD], [CARD]"),
        ("not a card 4111111111111112", "not a card 4111111111111112"),
        ("身份证 11010519491231002X。", "身份证 [ID]。"),
        (
            "id 110105194912310021 fails its check digit",
            "id 110105194912310021 fails its check digit",
        ),
        ("手机 13800138000\uff0c谢谢", "手机 [PHONE]\uff0c谢谢"),
        ("Authorization: Bearer abc.def", "Authorization: Bearer [SECRET]"),
        ("key sk-proj-AbCdEf0123456789abcd.", "key [SECRET]."),
        ("ghp_0123456789abcdefABCDEF and hf_abcdefghijklmnop1234", "[SECRET] and [SECRET]"),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln_-x", "jwt [SECRET]"),
        ("https://x.example/q?api_key=hunter2&x=1", "https://x.example/q?api_key=[SECRET]&x=1"),
        ("export PASSWORD=s3cret", "export PASSWORD=[SECRET]"),
        ("blob 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b", "blob [SECRET]"),
        ("(me@ex.org), path/jane@x.com.", "([EMAIL]), path/[EMAIL]."),
        ("order abc1234567, user_12345678", "order abc1234567, user_12345678"),
        ("abc123 4567890 end", "abc123 [PHONE] end"),
    ],
)
def test_redact(text, expected):
    assert redact(text) == expected


def test_redaction_patterns_cannot_backtrack():
    """Linear time: every pattern is character classes whose only repetition ends it, so a
    failed match never retries inside a run."""
    import llmserve.redact as module

    patterns = [v for v in vars(module).values() if isinstance(v, re.Pattern)]
    assert patterns
    for pattern in patterns:
        assert re.fullmatch(r"(\[[^\]]+\])+[*+]", pattern.pattern), pattern.pattern
    # Inputs that make backtracking patterns quadratic come back whole.
    for text in ("a" * 200_000, "1 " * 100_000, "a@" * 100_000, "eyJ." * 50_000, "+(" * 100_000):
        assert len(redact(text)) == len(text)


def test_prompt_log_writes_in_order_off_the_caller(caplog):
    from llmserve.promptlog import PromptLog

    plog = PromptLog()
    with caplog.at_level(logging.INFO, logger="llmserve.api"):
        for i in range(5):
            plog.submit("generate", f"prompt {i} to me@ex.org", f"rid-{i}")
        plog.close()
    records = [r for r in caplog.records if r.getMessage() == "prompt"]
    assert [r.request_id for r in records] == [f"rid-{i}" for i in range(5)]
    assert all("[EMAIL]" in r.prompt and r.threadName.startswith("prompt-log") for r in records)


# -- validation -------------------------------------------------------------------------------
def _params(body: bytes, prompt_tokens: int = 10, limit: int = 100) -> SamplingParams:
    req = parse_body(body, CompletionRequest)
    return sampling_params(req, prompt_tokens, limit, GenerationDefaults(0.6, 0.95, 0), 16)


def test_validation_defaults_and_limits():
    p = _params(b'{"prompt": "x"}')
    assert (p.max_tokens, p.temperature, p.top_p, p.top_k) == (16, 0.6, 0.95, 0)
    p = _params(b'{"prompt": "x", "max_tokens": 90, "temperature": 0, "top_k": -1, "stop": "##"}')
    assert p.max_tokens == 90 and p.greedy and p.top_k == 0 and p.stop == ["##"]
    with pytest.raises(APIError) as err:
        _params(b'{"prompt": "x", "max_tokens": 91}')
    assert err.value.status == 400
    assert "100" in err.value.message and "91" in err.value.message
    assert "101" in err.value.message  # the total
    with pytest.raises(APIError):
        _params(b'{"prompt": "x"}', prompt_tokens=100)
    assert _params(b'{"prompt": "x"}', prompt_tokens=95).max_tokens == 5


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"\xff",
        b"[1, 2]",
        b'{"prompt": "x", "max_tokens": -5}',
        b'{"prompt": "x", "temperature": "hot"}',
        b'{"prompt": "x", "temperature": NaN}',
        b'{"prompt": "x", "top_p": 1.5}',
        b'{"prompt": "x", "n": 2}',
        b'{"prompt": "x", "stop": [' + b",".join(b'"%d"' % i for i in range(17)) + b"]}",
        b'{"max_tokens": 3}',
    ],
)
def test_validation_rejects(body):
    with pytest.raises(APIError) as err:
        _params(body)
    assert err.value.status == 400
    assert set(err.value.body()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("top_k", b"1e30"),
        ("top_k", b"2147483648"),
        ("top_k", b"99999999999999999999999999999999"),
        ("max_tokens", b"99999999999999999999999999999999"),
        ("min_tokens", b"2147483648"),
        ("seed", b"18446744073709551616"),
        ("seed", b"-9223372036854775809"),
        ("seed", b"1e40"),
    ],
)
def test_huge_integers_are_400_naming_the_field(field, value):
    with pytest.raises(APIError) as err:
        _params(b'{"prompt": "x", "%s": %s}' % (field.encode(), value))
    assert err.value.status == 400
    assert err.value.body()["error"]["param"] == field


def test_top_k_and_seed_extremes_reach_the_engine_safely():
    req = parse_body(b'{"prompt": "x", "top_k": 2147483647}', CompletionRequest)
    defaults = GenerationDefaults()
    p = sampling_params(req, 10, 100, defaults, 16, vocab_size=50)
    assert p.top_k == 50
    assert sampling_params(req, 10, 100, defaults, 16).top_k == 2147483647
    cfg = BatchSampling.build([1.0], [1.0], [p.top_k], [None], torch.device("cpu"))
    assert 0 <= int(sample(torch.randn(1, 50), cfg)[0]) < 50
    for seed in (b"18446744073709551615", b"-9223372036854775808"):
        body = b'{"prompt": "x", "temperature": 1, "seed": %s}' % seed
        p = sampling_params(parse_body(body, CompletionRequest), 10, 100, defaults, 16)
        assert Sequence([1], p, _CharDecoder(), frozenset()).generator is not None


def test_unknown_fields_ignored():
    req = parse_body(
        b'{"prompt": "x", "frequency_penalty": 1, "whatever": {"a": 1}}', GenerateRequest
    )
    assert req.prompt == "x" and req.max_tokens == 16


# -- config -----------------------------------------------------------------------------------
def test_flags_env_and_defaults():
    parser = argparse.ArgumentParser()
    env = {"MAX_QUEUE": "7", "LOG_PROMPTS": "yes", "PORT": "9000", "MAX_MODEL_LEN": ""}
    add_serve_arguments(parser, env=env)
    s = settings_from_args(parser.parse_args(["--model", "/m/deepseek-r1", "--port", "9100"]))
    assert s.max_queue == 7 and s.log_prompts is True
    assert s.port == 9100  # the flag wins over the environment
    assert s.max_batch_size == 32 and s.served_model_name == "deepseek-r1"
    assert s.max_model_len == 0  # empty variable = default


@pytest.mark.parametrize("flag", [True, False])
def test_bad_log_level_is_a_configuration_error(flag, capsys):
    parser = argparse.ArgumentParser()
    with pytest.raises(SystemExit) as exc:  # the environment is checked when adding arguments
        add_serve_arguments(parser, env={} if flag else {"LOG_LEVEL": "verbose"})
        parser.parse_args(["--log-level", "verbose"] if flag else [])
    assert exc.value.code == 2
    assert "log" in capsys.readouterr().err.lower()


def test_log_level_choices_ignore_case():
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser, env={"LOG_LEVEL": "WARNING"})
    assert settings_from_args(parser.parse_args([])).log_level == "warning"
    for level in ("debug", "info", "warning", "error", "critical"):
        assert settings_from_args(parser.parse_args(["--log-level", level])).log_level == level
    assert settings_from_args(parser.parse_args(["--log-level", "Error"])).log_level == "error"


# -- sequence: detokenisation and stop strings ------------------------------------------------
class _CharDecoder:
    """Token id i is chr(i); enough to exercise the incremental logic."""

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)


def _run(text: str, **params: object) -> tuple[list[str], Sequence]:
    seq = Sequence([1], SamplingParams(max_tokens=100, **params), _CharDecoder(), frozenset({0}))
    out = []
    for ch in text:
        out.append(seq.append_token(ord(ch)))
        if seq.finished:
            break
    return out, seq


def test_stop_string_is_cut_and_held_back():
    out, seq = _run("hello END world", stop=["END"])
    assert "".join(out) == "hello " and seq.finish_reason == "stop"
    # "E" and "EN" were held back until they could no longer start the stop string.
    out, seq = _run("an ENd. ok", stop=["END"])
    assert "".join(out) == "an ENd. ok" and not seq.finished


def test_overlapping_stop_strings():
    out, seq = _run("xabce", stop=["abcd", "bc"])
    assert "".join(out) == "xa" and seq.finish_reason == "stop"
    out, seq = _run("no stop here", stop=["zz", "here!"])
    # "here" might still become "here!": held back until the sequence ends.
    assert "".join(out) == "no stop " and not seq.finished
    assert seq._release(final=True) == "here"


def test_eos_and_length():
    seq = Sequence([1], SamplingParams(max_tokens=3), _CharDecoder(), frozenset({0}))
    assert seq.append_token(ord("a")) == "a"
    seq.append_token(0)
    assert seq.finish_reason == "stop"
    seq = Sequence(
        [1], SamplingParams(max_tokens=2, ignore_eos=True), _CharDecoder(), frozenset({0})
    )
    seq.append_token(0)
    seq.append_token(0)
    assert seq.finish_reason == "length"


# -- sampling ---------------------------------------------------------------------------------
def test_seeded_rows_do_not_depend_on_the_batch():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)

    def run(rows: list[int]) -> list[int]:
        gens = [torch.Generator().manual_seed(7) if r == 2 else None for r in rows]
        cfg = BatchSampling.build(
            [1.0] * len(rows), [0.9] * len(rows), [20] * len(rows), gens, torch.device("cpu")
        )
        picks = []
        for _ in range(10):
            picks.append(int(sample(logits[rows], cfg)[rows.index(2)]))
        return picks

    assert run([2]) == run([0, 1, 2, 3]) == run([3, 2])


def test_greedy_and_top_k_one():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]])
    cfg = BatchSampling.build([0.0, 1.0], [1.0, 1.0], [0, 1], [None, None], torch.device("cpu"))
    assert sample(logits, cfg).tolist() == [1, 0]


# -- tiny model -------------------------------------------------------------------------------
def test_tiny_model_is_deterministic_and_verifiable(tiny_model, tmp_path):
    from llmserve.tiny_model import make_tiny_model

    again = make_tiny_model(tmp_path / "again")
    assert (again / "SHA256SUMS").read_text() == (tiny_model / "SHA256SUMS").read_text()
    subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=tiny_model, check=True)
    size = sum(p.stat().st_size for p in tiny_model.iterdir())
    assert size < 8_000_000
    config = (tiny_model / "config.json").read_text()
    assert "Qwen2ForCausalLM" in config


def test_precision_resolution():
    from llmserve.loader import LoadError, resolve_precision

    assert resolve_precision("auto", cuda=False, bf16_ok=False) == "fp32"
    assert resolve_precision("auto", cuda=True, bf16_ok=True) == "bf16"
    assert resolve_precision("auto", cuda=True, bf16_ok=False) == "fp16"
    for quant in ("int8", "int4"):
        with pytest.raises(LoadError, match="CUDA"):
            resolve_precision(quant, cuda=False, bf16_ok=False)
    with pytest.raises(LoadError):
        resolve_precision("fp8", cuda=True, bf16_ok=True)


# -- reasoning --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "reasoning", "content"),
    [
        ("Let me think.\n</think>\n\nIt is 4.", "Let me think.\n", "\n\nIt is 4."),
        ("<think>\nhmm</think>ok", "\nhmm", "ok"),
        ("  <think>x</think>", "x", ""),
        ("never ends", "never ends", None),
        ("a </thi", "a </thi", None),
        ("</think>just the answer", "", "just the answer"),
    ],
)
def test_split_reasoning(text, reasoning, content):
    from llmserve.reasoning import split_reasoning

    assert split_reasoning(text) == (reasoning, content)


def test_reasoning_splitter_holds_back_a_tag_split_across_pieces():
    from llmserve.reasoning import ReasoningSplitter

    splitter = ReasoningSplitter()
    out = [splitter.feed(p) for p in ["<th", "ink>A", "b </", "think", ">C"]]
    assert out == [("", ""), ("A", ""), ("b ", ""), ("", ""), ("", "C")]
    assert splitter.flush() == ("", "")


# -- penalties --------------------------------------------------------------------------------
def test_penalties_follow_the_openai_and_transformers_formulas():
    from llmserve.penalties import Penalties

    params = [
        SamplingParams(max_tokens=1, presence_penalty=0.5, frequency_penalty=0.25),
        SamplingParams(max_tokens=1, repetition_penalty=2.0),
        SamplingParams(max_tokens=1, logit_bias={3: -100.0, 0: 1.5}),
        SamplingParams(max_tokens=1),
    ]
    penalties = Penalties.build(params, [[1], [1], [1], [1]])
    assert penalties is not None
    logits = torch.tensor([[1.0, 2.0, -2.0, 4.0]] * 4)
    out = penalties.apply(logits, [[3, 3, 2], [2], [], [3]])
    # presence 0.5 once per seen token, frequency 0.25 per occurrence
    assert out[0].tolist() == [1.0, 2.0, -2.0 - 0.75, 4.0 - 1.0]
    # repetition: prompt token 1 and output token 2; positive divided, negative multiplied
    assert out[1].tolist() == [1.0, 1.0, -4.0, 4.0]
    assert out[2].tolist() == [2.5, 2.0, -2.0, -96.0]
    assert out[3].tolist() == [1.0, 2.0, -2.0, 4.0]  # a row without settings is untouched
    assert Penalties.build([SamplingParams(max_tokens=1)], [[1]]) is None


# -- memory budget ----------------------------------------------------------------------------
def test_kv_budget_of_a_7b_distill_and_the_context_limit():
    from types import SimpleNamespace

    from llmserve.memory import (
        DEFAULT_CONTEXT_LIMIT,
        BudgetError,
        KVBudget,
        compute_budget,
        context_limit,
        kv_bytes_per_token,
    )

    # DeepSeek-R1-Distill-Qwen-7B: 28 layers, 28 heads of 128, 4 KV heads, bf16.
    qwen7b = SimpleNamespace(
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        hidden_size=3584,
        intermediate_size=18944,
        vocab_size=152064,
    )
    assert kv_bytes_per_token(qwen7b, 2) == 2 * 28 * 4 * 128 * 2
    budget = compute_budget(qwen7b, 2, "cpu", 0.9, 100_000, 8192, 32)
    assert (budget.tokens, budget.bytes) == (100_000, 100_000 * 57344)
    # No limit set: 32768, not the model's 131072 positions; the model's, when fewer.
    assert context_limit(131072, 0, budget) == DEFAULT_CONTEXT_LIMIT
    assert context_limit(2048, 0, budget) == 2048
    small = KVBudget(57344, 20_000, "test")
    assert context_limit(131072, 0, small) == 20_000
    with pytest.raises(BudgetError, match=r"--max-model-len 65536 needs 3\.50 GiB.*20000 tokens"):
        context_limit(131072, 65536, small)


def test_penalty_counts_follow_the_output_step_by_step():
    """Counts kept between steps equal counts made from the whole output each time."""
    from llmserve.penalties import Penalties, output_counts

    penalties = Penalties.build([SamplingParams(max_tokens=9, frequency_penalty=1.0)] * 2, [[], []])
    assert penalties is not None
    outputs: list[list[int]] = [[], [2]]
    for step in range(6):
        outputs[0].append(step % 3)
        outputs[1].append((step * 2) % 5)
        got = penalties.apply(torch.zeros(2, 5), outputs)
        assert got.tolist() == (-output_counts(outputs, 5, torch.device("cpu"))).tolist()
