"""Command line: `llmserve serve | check-device | make-tiny-model | bench`."""

from __future__ import annotations

import os
import time

_T0 = time.monotonic()  # cold start is measured from here, before the heavy imports

# Before torch loads OpenMP: idle worker threads sleep instead of spinning. On a shared
# host (or a busy CPU) spinning threads make every parallel region wait for descheduled
# peers, which costs far more than the wake-up. Set OMP_WAIT_POLICY to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402


def _serve(args: argparse.Namespace) -> int:
    import faulthandler

    from llmserve.config import settings_from_args
    from llmserve.logs import setup_logging
    from llmserve.server import serve

    # A fatal signal (SIGABRT from systemd's watchdog among them) writes every thread's
    # stack to stderr first: the journal shows where a stuck engine was.
    faulthandler.enable()
    settings = settings_from_args(args)
    setup_logging(settings.log_level)
    log = logging.getLogger("llmserve")
    if not settings.model:
        log.error("no model: pass --model or set MODEL_PATH")
        return 2
    try:
        return asyncio.run(serve(settings, _T0))
    except (OSError, ValueError) as exc:  # unreadable key files, bad JWT settings
        log.error("cannot start: %s", exc)
        return 2


def _check_device(args: argparse.Namespace) -> int:
    import json

    from llmserve.device import DeviceError, cuda_report, select_device

    report = cuda_report()
    out = report.as_dict()
    try:
        out["selected"] = select_device(args.device, report)
        code = 0
    except DeviceError as exc:
        out["selected"] = None
        out["error"] = str(exc)
        code = 2
    print(json.dumps(out))
    if code:
        print(f"llmserve: {out['error']}", file=sys.stderr)
    return code


def _make_tiny_model(args: argparse.Namespace) -> int:
    from llmserve.tiny_model import TinyShape, make_tiny_model

    shape = TinyShape(
        hidden_size=args.hidden_size,
        layers=args.layers,
        heads=args.heads,
        kv_heads=args.kv_heads,
        intermediate_size=args.intermediate_size,
        vocab_size=args.vocab_size,
        max_position_embeddings=args.max_position_embeddings,
        seed=args.seed,
    )
    out = make_tiny_model(args.directory, shape)
    print(out)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from llmserve.bench import run_bench

    return run_bench(args)


def build_parser() -> argparse.ArgumentParser:
    from llmserve import __version__
    from llmserve.config import add_serve_arguments
    from llmserve.device import DEVICES

    parser = argparse.ArgumentParser(prog="llmserve", description=__doc__)
    parser.add_argument("--version", action="version", version=f"llmserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP service")
    add_serve_arguments(serve)
    serve.set_defaults(func=_serve)

    check = sub.add_parser(
        "check-device",
        help="print what torch sees of CUDA (JSON); exit 2 when --device cannot be used",
    )
    check.add_argument("--device", default="cuda", choices=DEVICES)
    check.set_defaults(func=_check_device)

    tiny = sub.add_parser("make-tiny-model", help="write a small random Qwen2-shaped model")
    tiny.add_argument("directory")
    tiny.add_argument("--hidden-size", type=int, default=128)
    tiny.add_argument("--layers", type=int, default=2)
    tiny.add_argument("--heads", type=int, default=4)
    tiny.add_argument("--kv-heads", type=int, default=2)
    tiny.add_argument("--intermediate-size", type=int, default=0, help="0: about 2.75x hidden")
    tiny.add_argument("--vocab-size", type=int, default=2048)
    tiny.add_argument("--max-position-embeddings", type=int, default=2048)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_make_tiny_model)

    from llmserve.bench import add_bench_arguments

    bench = sub.add_parser("bench", help="benchmark against the naive baseline and the ceiling")
    add_bench_arguments(bench)
    bench.set_defaults(func=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
