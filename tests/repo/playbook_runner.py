"""Run a playbook of this repository through ansible-runner and read the outcome from its events.

Tests assert on what Ansible reports per task (which task failed, on which host, with which
message), not on the text ansible-playbook prints.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ansible_runner

from .conftest import ROOT

# ansible-playbook of the interpreter running the tests, whatever PATH says.
BIN = Path(sys.executable).parent

# Events carrying one host's result for one task, and the status each one stands for.
RESULT_EVENTS = {
    "runner_on_ok": "ok",
    "runner_on_failed": "failed",
    "runner_on_skipped": "skipped",
    "runner_on_unreachable": "unreachable",
}


@dataclass(frozen=True)
class TaskResult:
    """One host's result for one task."""

    host: str
    task: str
    play: str
    # ok, changed, skipped, failed, unreachable, or ignored (failed under ignore_errors).
    status: str
    # The result's msg: an assert's fail_msg, a module's error, the argument errors.
    msg: str = ""


@dataclass(frozen=True)
class PlaybookResult:
    """What a run returned, and what its events say happened on each host."""

    rc: int
    # ansible-runner's status: successful, failed, timeout, canceled.
    status: str
    # Every host result in the order Ansible reported them.
    results: tuple[TaskResult, ...]
    plays: tuple[str, ...]
    # Everything ansible-playbook printed (stderr included), for failure messages.
    stdout: str

    @property
    def failed(self) -> list[TaskResult]:
        """Failed and unreachable results; a failure a rescue block handled is listed too."""
        return [r for r in self.results if r.status in ("failed", "unreachable")]

    @property
    def changed(self) -> list[TaskResult]:
        return [r for r in self.results if r.status == "changed"]

    @property
    def tasks_run(self) -> list[str]:
        """Names of the tasks that ran (not skipped) on at least one host, in order."""
        return list(dict.fromkeys(r.task for r in self.results if r.status != "skipped"))

    def in_play(self, play: str) -> list[TaskResult]:
        return [r for r in self.results if r.play == play]

    def tail(self, chars: int = 3000) -> str:
        return self.stdout[-chars:]


def task_result(event: Mapping[str, Any]) -> TaskResult | None:
    """The host result an ansible-runner event carries, or None for other events."""
    status = RESULT_EVENTS.get(event.get("event", ""))
    if status is None:
        return None
    data = event.get("event_data", {})
    res = data.get("res") or {}
    if status == "ok" and res.get("changed"):
        status = "changed"
    elif status == "failed" and data.get("ignore_errors"):
        status = "ignored"
    return TaskResult(
        host=str(data.get("host", "")),
        task=str(data.get("task", "")),
        play=str(data.get("play", "")),
        status=status,
        msg=str(res.get("msg", "")) if status in ("failed", "unreachable", "ignored") else "",
    )


def run_playbook(
    private_data_dir: Path,
    playbook: Path | str,
    *,
    inventory: Path | str | None = None,
    extravars: Mapping[str, object] | None = None,
    cmdline: Sequence[str] = (),
    envvars: Mapping[str, str] | None = None,
    timeout: int = 300,
) -> PlaybookResult:
    """Run a playbook (a path relative to the repository root, or absolute) with ansible-runner.

    private_data_dir: an empty directory for ansible-runner's files (a test's tmp_path).
    inventory: a path relative to the repository root or absolute; None uses ansible.cfg's.
    cmdline: more ansible-playbook options, e.g. ["--check"], ["--tags", "nginx"].
    The run uses this repository's ansible.cfg and roles, and a fact cache of its own, so
    facts from an earlier run never stand in for missing ones.
    """
    private_data_dir.mkdir(parents=True, exist_ok=True)
    runner = ansible_runner.run(
        private_data_dir=str(private_data_dir),
        # The working directory of the run, as when a user runs ansible-playbook here.
        project_dir=str(ROOT),
        playbook=str(ROOT / playbook),
        inventory=None if inventory is None else str(ROOT / inventory),
        extravars=dict(extravars or {}),
        cmdline=shlex.join(cmdline) or None,
        envvars={
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
            "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
            "ANSIBLE_NOCOLOR": "1",
            "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
            **(envvars or {}),
        },
        # Arguments go on the command line rather than into files under private_data_dir.
        suppress_env_files=True,
        quiet=True,
        timeout=timeout,
    )
    events = list(runner.events)
    with runner.stdout as stdout:
        output = stdout.read()
    return PlaybookResult(
        rc=int(runner.rc),
        status=str(runner.status),
        results=tuple(r for r in map(task_result, events) if r is not None),
        plays=tuple(
            str(e["event_data"].get("play", ""))
            for e in events
            if e.get("event") == "playbook_on_play_start"
        ),
        stdout=output,
    )
