"""A bad inventory value stops a role before it changes anything, naming the variable."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .conftest import role_dirs
from .playbook_runner import run_playbook

# One wrong value per role: (variable, value). Roles not listed get a wrong type
# for their first list or bool default, derived below.
BAD_VALUES: dict[str, tuple[str, object]] = {
    "common": ("common_sshd_permit_root_login", "sometimes"),
}


def bad_value_for(role: Path) -> tuple[str, object]:
    if role.name in BAD_VALUES:
        return BAD_VALUES[role.name]
    import yaml

    specs = yaml.safe_load((role / "meta/argument_specs.yml").read_text(encoding="utf-8"))
    options = specs["argument_specs"]["main"]["options"]
    # Strings become one-element lists, so break an int or a bool when there is one.
    for wanted in ("int", "bool", "dict"):
        for name, spec in options.items():
            if spec.get("type") == wanted:
                return name, f"not-a-{wanted}-value"
    pytest.skip(f"{role.name}: no typed option to break")


# This machine, driven with the interpreter of the tests.
LOCAL = f"{{ansible_connection: local, ansible_python_interpreter: {sys.executable}}}"


def local_inventory(tmp_path: Path, text: str | None = None) -> Path:
    """An inventory file; by default localhost alone, reached without ssh."""
    path = tmp_path / "hosts.yml"
    path.write_text(text or f"all:\n  hosts:\n    localhost: {LOCAL}\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("role", role_dirs(), ids=[r.name for r in role_dirs()])
def test_bad_value_fails_fast(role: Path, tmp_path: Path) -> None:
    name, value = bad_value_for(role)
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        f"- hosts: localhost\n  gather_facts: true\n  roles:\n    - role: {role.name}\n",
        encoding="utf-8",
    )
    result = run_playbook(
        tmp_path / "runner",
        playbook,
        inventory=local_inventory(tmp_path),
        extravars={name: value},
        cmdline=["--check"],
    )
    assert result.rc != 0, f"{role.name}: {name}={value!r} was accepted"
    assert len(result.failed) == 1, result.tail()
    refusal = result.failed[0]
    assert refusal.task.startswith("Validating arguments against arg spec"), refusal
    assert name in refusal.msg, f"{role.name}: the error does not name {name}: {refusal.msg}"
    # The refusal ends the run, and nothing changed before it.
    assert result.tasks_run[-1] == refusal.task, result.tasks_run
    assert result.changed == []


def test_peer_without_address_is_named(tmp_path: Path) -> None:
    """A load balancer whose peer has no known address stops, naming the peer."""
    inventory = local_inventory(
        tmp_path, f"lb:\n  hosts:\n    lb1: {LOCAL}\n    lb2: {{ansible_host: 192.0.2.12}}\n"
    )
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        "- hosts: lb1\n  gather_facts: true\n  roles:\n    - role: keepalived\n"
        "      keepalived_virtual_ipaddresses: [192.0.2.100/24]\n",
        encoding="utf-8",
    )
    result = run_playbook(tmp_path / "runner", playbook, inventory=inventory, cmdline=["--check"])
    assert result.rc != 0, result.tail()
    assert [(r.host, r.task) for r in result.failed] == [
        ("lb1", "Check that every unicast peer has an address")
    ], result.tail()
    msg = result.failed[0].msg
    assert "no address for the peer(s) ['lb2']" in msg, msg
    assert "keepalived_unicast_src_ip" in msg
    assert result.changed == []
