"""Every role follows the house conventions that users and reviewers rely on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import ROOT, load_yaml, role_dirs

ROLES = role_dirs()
ROLE_IDS = [r.name for r in ROLES]

# Config files of daemons that ship a checker must be validated before they land.
VALIDATED_DESTINATIONS = re.compile(
    r"nginx|keepalived|prometheus|alertmanager|nftables|nft|/ssh/|sudoers|chrony"
)


def role_task_files(role: Path) -> list[Path]:
    return sorted((role / "tasks").glob("*.yml")) + sorted((role / "handlers").glob("*.yml"))


def tasks_in(path: Path) -> list[dict]:
    found: list[dict] = []

    def walk(items: object) -> None:
        if not isinstance(items, list):
            return
        for item in items:
            if isinstance(item, dict):
                found.append(item)
                for key in ("block", "rescue", "always"):
                    walk(item.get(key))

    walk(load_yaml(path))
    return found


def test_there_are_roles() -> None:
    assert ROLES, "no roles found"


@pytest.mark.parametrize("role", ROLES, ids=ROLE_IDS)
def test_role_layout(role: Path) -> None:
    for part in (
        "defaults/main.yml",
        "tasks/main.yml",
        "meta/main.yml",
        "meta/argument_specs.yml",
        "README.md",
    ):
        assert (role / part).is_file(), f"{role.name}: missing {part}"


@pytest.mark.parametrize("role", ROLES, ids=ROLE_IDS)
def test_defaults_are_prefixed_specified_and_documented(role: Path) -> None:
    defaults = load_yaml(role / "defaults/main.yml") or {}
    specs = load_yaml(role / "meta/argument_specs.yml")["argument_specs"]["main"]["options"]
    readme = (role / "README.md").read_text(encoding="utf-8")
    for name in defaults:
        assert name.startswith(f"{role.name}_"), f"{role.name}: {name} lacks the role prefix"
        assert name in specs, f"{role.name}: {name} is not in meta/argument_specs.yml"
        assert f"`{name}`" in readme, f"{role.name}: {name} is not documented in README.md"
    for name in specs:
        assert name in defaults or specs[name].get("required"), (
            f"{role.name}: {name} is specified but has no default"
        )


@pytest.mark.parametrize("role", ROLES, ids=ROLE_IDS)
def test_defaults_are_commented(role: Path) -> None:
    lines = (role / "defaults/main.yml").read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[a-z][a-z0-9_]*:", line):
            above = [x for x in lines[:i] if x.strip()]
            block = lines[: i + 1]
            prev = above[-1] if above else ""
            # A variable carries its own comment, or shares the one of the
            # variable right above it (a group of related settings).
            assert (
                prev.lstrip().startswith("#")
                or re.match(r"^[a-z][a-z0-9_]*:", prev)
                or (prev.startswith((" ", "-")))
            ), f"{role.name}: {line.split(':')[0]} has no comment ({len(block)})"


@pytest.mark.parametrize("role", ROLES, ids=ROLE_IDS)
def test_modules_are_fully_qualified(role: Path) -> None:
    keywords = {
        "name",
        "when",
        "loop",
        "loop_control",
        "register",
        "notify",
        "tags",
        "vars",
        "become",
        "become_user",
        "changed_when",
        "failed_when",
        "check_mode",
        "no_log",
        "until",
        "retries",
        "delay",
        "block",
        "rescue",
        "always",
        "listen",
        "args",
        "environment",
        "ignore_errors",
        "delegate_to",
        "run_once",
        "diff",
        "with_items",
        "throttle",
        "timeout",
        "any_errors_fatal",
        "async",
        "poll",
        "module_defaults",
    }
    for path in role_task_files(role):
        for task in tasks_in(path):
            actions = [k for k in task if k not in keywords]
            for action in actions:
                assert action.count(".") >= 2, f"{path.relative_to(ROOT)}: '{action}' is not FQCN"


@pytest.mark.parametrize("role", ROLES, ids=ROLE_IDS)
def test_daemon_configs_are_validated(role: Path) -> None:
    for path in role_task_files(role):
        for task in tasks_in(path):
            args = task.get("ansible.builtin.template")
            if not isinstance(args, dict):
                continue
            dest = str(args.get("dest", ""))
            # systemd units and drop-ins are checked by their own tasks, not daemons' checkers.
            if VALIDATED_DESTINATIONS.search(dest) and not dest.startswith("/etc/systemd/"):
                assert "validate" in args, (
                    f"{path.relative_to(ROOT)}: template to {dest} has no validate"
                )


@pytest.mark.parametrize("role", ROLES, ids=ROLE_IDS)
def test_handlers_reload_where_they_can(role: Path) -> None:
    handlers = role / "handlers/main.yml"
    if not handlers.exists():
        return
    text = handlers.read_text(encoding="utf-8")
    for match in re.finditer(r"state: restarted", text):
        before = text[: match.start()]
        block = before[before.rfind("\n- name:") :]
        preceding = before[: before.rfind("\n- name:")].rstrip().splitlines()
        assert preceding and preceding[-1].lstrip().startswith("#"), (
            f"{role.name}: a handler restarts without a comment saying why it cannot reload:"
            f"{block.strip()}"
        )
