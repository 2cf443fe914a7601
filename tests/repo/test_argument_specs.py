"""A bad inventory value stops a role before it changes anything, naming the variable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, role_dirs

BIN = Path(sys.executable).parent

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


def run_playbook(*args: str) -> subprocess.CompletedProcess[str]:
    """ansible-playbook --check with this repository's config and roles, no cached facts."""
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "--check", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
            "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
            # Facts from an earlier lab run must not stand in for missing ones.
            "ANSIBLE_CACHE_PLUGIN": "memory",
        },
        timeout=120,
    )


@pytest.mark.parametrize("role", role_dirs(), ids=[r.name for r in role_dirs()])
def test_bad_value_fails_fast(role: Path, tmp_path: Path) -> None:
    name, value = bad_value_for(role)
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        f"- hosts: localhost\n  gather_facts: true\n  roles:\n    - role: {role.name}\n",
        encoding="utf-8",
    )
    extra = json.dumps({name: value, "ansible_python_interpreter": sys.executable})
    result = run_playbook("-i", "localhost,", "-c", "local", "-e", extra, str(playbook))
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"{role.name}: {name}={value!r} was accepted"
    assert name in output, f"{role.name}: the error does not name {name}:\n{output[-2000:]}"
    assert "Validating arguments against arg spec" in output
    assert "changed=" in output and "changed=0" in output


def test_peer_without_address_is_named(tmp_path: Path) -> None:
    """A load balancer whose peer has no known address stops, naming the peer."""
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        "lb:\n  hosts:\n"
        f"    lb1: {{ansible_connection: local, ansible_python_interpreter: {sys.executable}}}\n"
        "    lb2: {ansible_host: 192.0.2.12}\n",
        encoding="utf-8",
    )
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        "- hosts: lb1\n  gather_facts: true\n  roles:\n    - role: keepalived\n"
        "      keepalived_virtual_ipaddresses: [192.0.2.100/24]\n",
        encoding="utf-8",
    )
    result = run_playbook("-i", str(inventory), str(playbook))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-2000:]
    assert "no address for the peer(s) ['lb2']" in output, output[-2000:]
    assert "keepalived_unicast_src_ip" in output
