"""Run a playbook through ansible-runner and write what happened, task by task, as JSON.

Scenarios run it on the controller to drive a playbook and then assert on the summary
(which task failed, on which host, with which message) rather than on printed output:

    {{ ansible_playbook_python }} molecule/shared/files/run_playbook.py \\
        --inventory INVENTORY --playbook playbooks/drain.yml \\
        --extra-vars '{"drain_host": "gpu1"}' --out /tmp/drain.json

The summary: {"rc", "status", "failed": [{"host", "task", "play", "msg"}],
"changed": [{"host", "task"}], "tasks": [{"host", "task", "play", "status", "seconds"}],
"stats"}.
The exit status is 0 whatever the playbook's result (the summary carries it), and 2 with
the reason on stderr when the run could not start. The environment passes through
(ANSIBLE_CONFIG, ANSIBLE_ROLES_PATH, CONTAINERS_CONF, MOLECULE_*), and so does its fact
cache; Ansible's output goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import ansible_runner

# Events carrying one host's result for one task, and the status each one stands for.
RESULT_EVENTS = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_skipped": "skipped",
    "runner_on_unreachable": "unreachable",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inventory", required=True, type=Path)
    parser.add_argument("--playbook", required=True, type=Path)
    parser.add_argument(
        "--extra-vars",
        action="append",
        default=[],
        type=json_object,
        help="a JSON object; repeat to add more (later ones win)",
    )
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--diff", action="store_true")
    parser.add_argument("--tags")
    parser.add_argument("--skip-tags")
    parser.add_argument("--limit")
    parser.add_argument("--out", required=True, type=Path, help="where the JSON summary goes")
    return parser.parse_args(argv)


def json_object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def summarize(events: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The failed, changed and ran tasks of a run, per host, from ansible-runner's events."""
    failed: list[dict[str, str]] = []
    changed: list[dict[str, str]] = []
    tasks: list[dict[str, Any]] = []
    for event in events:
        status = RESULT_EVENTS.get(event.get("event", ""))
        if status is None:
            continue
        data = event.get("event_data", {})
        res = data.get("res") or {}
        where = {"host": str(data.get("host", "")), "task": str(data.get("task", ""))}
        play = str(data.get("play", ""))
        if status == "ok" and res.get("changed"):
            status = "changed"
            changed.append(where)
        elif status in ("failed", "unreachable"):
            if data.get("ignore_errors"):
                status = "ignored"
            else:
                failed.append({**where, "play": play, "msg": str(res.get("msg", ""))})
        seconds = round(float(data.get("duration") or 0), 2)
        tasks.append({**where, "play": play, "status": status, "seconds": seconds})
    return {"failed": failed, "changed": changed, "tasks": tasks}


def run(args: argparse.Namespace, private_data_dir: str) -> dict[str, Any]:
    extravars: dict[str, Any] = {}
    for extra in args.extra_vars:
        extravars.update(extra)
    runner = ansible_runner.run(
        private_data_dir=private_data_dir,
        # Relative paths in the inventory and playbook resolve as for ansible-playbook here.
        project_dir=os.getcwd(),
        playbook=str(args.playbook.resolve()),
        inventory=str(args.inventory.resolve()),
        extravars=extravars,
        cmdline=" ".join(
            flag for flag, on in (("--check", args.check), ("--diff", args.diff)) if on
        )
        or None,
        tags=args.tags,
        skip_tags=args.skip_tags,
        limit=args.limit,
        # ansible-playbook from this interpreter's environment, whatever PATH says.
        envvars={
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        },
        # Not runner's own jsonfile cache: the environment's fact cache stays in force.
        fact_cache_type="environment",
        # Arguments (secrets among them) go on the command line, not into files.
        suppress_env_files=True,
    )
    return {
        "rc": int(runner.rc),
        "status": str(runner.status),
        **summarize(runner.events),
        "stats": runner.stats or {},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for path in (args.inventory, args.playbook):
        if not path.exists():
            print(f"run_playbook: {path} does not exist", file=sys.stderr)
            return 2
    try:
        with tempfile.TemporaryDirectory(prefix="run_playbook-") as private_data_dir:
            summary = run(args, private_data_dir)
    except Exception as error:  # ansible-runner could not start the run
        print(f"run_playbook: the run could not start: {error}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
