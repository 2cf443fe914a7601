"""Settings of `llmserve serve`: every flag has an environment variable.

Precedence: command-line flag, then environment variable, then default. An empty variable
counts as unset.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from llmserve.device import DEVICES
from llmserve.loader import PRECISIONS
from llmserve.reasoning import PARSERS


def parse_bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {value!r}")


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _lower(value: str) -> str:
    return value.strip().lower()


@dataclass
class Settings:
    model: str = ""
    host: str = "0.0.0.0"
    port: int = 8000
    served_model_name: str = ""
    engine: str = "batch"
    max_batch_size: int = 32
    max_queue: int = 256
    max_model_len: int = 0
    max_prefill_tokens: int = 8192
    gpu_memory_utilization: float = 0.9
    kv_cache_tokens: int = 0
    engine_stall_timeout: float = 60.0
    engine_max_failures: int = 3
    precision: str = "auto"
    device: str = "auto"
    threads: int = 0
    api_keys_file: str = ""
    jwt_secret_file: str = ""
    jwt_public_key_file: str = ""
    jwt_algorithm: str = ""
    jwt_audience: str = ""
    jwt_issuer: str = ""
    allow_unauthenticated: bool = False
    auth_failure_rps: float = 0.2
    auth_failure_burst: int = 10
    rate_limit_rps: float = 10.0
    rate_limit_burst: int = 64
    max_concurrent_per_key: int = 128
    max_body_bytes: int = 1_048_576
    trusted_proxies: str = "127.0.0.1"
    drain_timeout: float = 30.0
    log_prompts: bool = False
    log_level: str = "info"
    enable_fault_injection: bool = False
    reasoning_parser: str = ""


@dataclass(frozen=True)
class Option:
    field: str
    env: str
    type: Callable[[str], Any]
    help: str
    choices: tuple[str, ...] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option("model", "MODEL_PATH", str, "model directory (Hugging Face layout)"),
    Option("host", "HOST", str, "address to listen on"),
    Option("port", "PORT", int, "port to listen on"),
    Option(
        "served_model_name", "SERVED_MODEL_NAME", str, "model id in the API (default: dir name)"
    ),
    Option("engine", "ENGINE", str, "batch (continuous batching) or naive", ("batch", "naive")),
    Option("max_batch_size", "MAX_BATCH_SIZE", int, "most sequences decoded together"),
    Option("max_queue", "MAX_QUEUE", int, "most requests waiting for a batch slot (then 429)"),
    Option(
        "max_model_len",
        "MAX_MODEL_LEN",
        int,
        "context limit; 0 = 32768 or the model's positions if fewer, at most the KV budget",
    ),
    Option(
        "gpu_memory_utilization",
        "GPU_MEMORY_UTILIZATION",
        float,
        "share of the GPU's memory (on a CPU, of the available memory) for weights, "
        "activations and the KV cache",
    ),
    Option(
        "kv_cache_tokens",
        "KV_CACHE_TOKENS",
        int,
        "token slots of the KV cache (rows x width of the batch); 0 = what the memory holds",
    ),
    Option("max_prefill_tokens", "MAX_PREFILL_TOKENS", int, "prompt tokens per prefill pass"),
    Option(
        "engine_stall_timeout",
        "ENGINE_STALL_TIMEOUT",
        float,
        "seconds without engine progress, with work pending, before /ready turns 503; 0 = off",
    ),
    Option(
        "engine_max_failures",
        "ENGINE_MAX_FAILURES",
        int,
        "engine steps failing in a row before /ready turns 503; 0 = off",
    ),
    Option("precision", "PRECISION", str, "weights precision", PRECISIONS),
    Option(
        "device",
        "DEVICE",
        _lower,
        "auto: the GPU when CUDA works, else the CPU; cuda: refuse to start without a "
        "usable GPU; cpu: never use CUDA",
        DEVICES,
    ),
    Option("threads", "TORCH_THREADS", int, "CPU threads for torch; 0 = available cores"),
    Option("api_keys_file", "API_KEYS_FILE", str, "file with one API key per line"),
    Option("jwt_secret_file", "JWT_SECRET_FILE", str, "HMAC secret for JWT bearer tokens"),
    Option("jwt_public_key_file", "JWT_PUBLIC_KEY_FILE", str, "PEM public key for JWT tokens"),
    Option(
        "jwt_algorithm",
        "JWT_ALGORITHM",
        str,
        "the one accepted JWT algorithm (default HS256 with a secret, RS256 with a key)",
    ),
    Option("jwt_audience", "JWT_AUDIENCE", str, "required JWT `aud`"),
    Option("jwt_issuer", "JWT_ISSUER", str, "required JWT `iss`"),
    Option(
        "allow_unauthenticated",
        "ALLOW_UNAUTHENTICATED",
        parse_bool,
        "serve everyone when no API keys file and no JWT key is given (else: refuse to start)",
    ),
    Option(
        "auth_failure_rps",
        "AUTH_FAILURE_RPS",
        float,
        "failed authentications/s a client address may make, past the burst (then 429); 0 = off",
    ),
    Option("auth_failure_burst", "AUTH_FAILURE_BURST", int, "failed authentications per address"),
    Option("rate_limit_rps", "RATE_LIMIT_RPS", float, "requests/s per key or IP; 0 = off"),
    Option("rate_limit_burst", "RATE_LIMIT_BURST", int, "token-bucket size per key or IP"),
    Option(
        "max_concurrent_per_key",
        "MAX_CONCURRENT_PER_KEY",
        int,
        "generation requests one key (or address) may have in flight (then 429); 0 = off",
    ),
    Option("max_body_bytes", "MAX_BODY_BYTES", int, "largest request body (then 413)"),
    Option(
        "trusted_proxies",
        "TRUSTED_PROXIES",
        str,
        "comma-separated addresses, networks or names of the load balancers whose "
        "X-Forwarded-For names the client",
    ),
    Option("drain_timeout", "DRAIN_TIMEOUT", float, "seconds in-flight work may take on SIGTERM"),
    Option(
        "log_prompts", "LOG_PROMPTS", parse_bool, "log prompts (personal data and secrets redacted)"
    ),
    Option("log_level", "LOG_LEVEL", _lower, "log threshold", LOG_LEVELS),
    Option(
        "reasoning_parser",
        "REASONING_PARSER",
        str,
        "deepseek_r1: chat output before </think> goes to reasoning_content",
        PARSERS,
    ),
    Option(
        "enable_fault_injection",
        "ENABLE_FAULT_INJECTION",
        parse_bool,
        "expose POST /debug/fault to make engine steps fail or stall (testing only)",
    ),
)

_DEFAULTS = Settings()


def add_serve_arguments(
    parser: argparse.ArgumentParser, env: Mapping[str, str] | None = None
) -> None:
    env = os.environ if env is None else env
    for opt in OPTIONS:
        default = getattr(_DEFAULTS, opt.field)
        if env.get(opt.env, "").strip():  # unset or empty: the default
            try:
                default = opt.type(env[opt.env])
            except (ValueError, argparse.ArgumentTypeError):
                parser.error(f"environment variable {opt.env}={env[opt.env]!r} is not valid")
            if opt.choices and default not in opt.choices:
                parser.error(f"environment variable {opt.env} must be one of {opt.choices}")
        kwargs: dict[str, Any] = {
            "dest": opt.field,
            "default": default,
            "help": f"{opt.help} [env {opt.env}, default {getattr(_DEFAULTS, opt.field)!r}]",
        }
        if opt.type is parse_bool:
            kwargs["nargs"] = "?"
            kwargs["const"] = True
            kwargs["type"] = parse_bool
        else:
            kwargs["type"] = opt.type
        if opt.choices:
            kwargs["choices"] = opt.choices
        parser.add_argument(opt.flag, **kwargs)


def settings_from_args(args: argparse.Namespace) -> Settings:
    values = {f.name: getattr(args, f.name) for f in fields(Settings) if hasattr(args, f.name)}
    settings = Settings(**values)
    if not settings.served_model_name and settings.model:
        settings.served_model_name = os.path.basename(os.path.normpath(settings.model))
    return settings
