"""The playbooks and inventories hang together."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, load_yaml

BIN = Path(sys.executable).parent
INVENTORIES = ["prod", "staging", "lab"]
DOC_RANGES = [ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("198.51.100.0/24")]


def test_site_imports_existing_group_playbooks() -> None:
    site = load_yaml(ROOT / "site.yml")
    imported = [play["ansible.builtin.import_playbook"] for play in site]
    assert imported, "site.yml imports nothing"
    for path in imported:
        assert (ROOT / path).is_file(), f"site.yml imports missing {path}"
        assert path.startswith("playbooks/")


def inventory(name: str) -> dict:
    out = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", f"inventories/{name}", "--list"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")},
    )
    return json.loads(out.stdout)


@pytest.mark.parametrize("name", INVENTORIES)
def test_inventory_has_the_groups(name: str) -> None:
    data = inventory(name)
    for group in ("gpu", "lb", "monitoring"):
        assert group in data["all"]["children"], f"{name}: no group {group}"
    assert len(data["lb"]["hosts"]) >= 2, f"{name}: the VIP needs two load balancers"


def test_prod_uses_documentation_addresses() -> None:
    data = inventory("prod")
    hostvars = data["_meta"]["hostvars"]
    assert hostvars
    for host, hv in hostvars.items():
        addr = ipaddress.ip_address(hv["ansible_host"])
        assert any(addr in net for net in DOC_RANGES), (
            f"{host}: {addr} is not a documentation address"
        )


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"drain_host": "lb1"}, "drain_host"),
        ({"drain_host": "gpu1", "drain_action": "off"}, "drain_action"),
    ],
)
def test_drain_refuses_a_bad_request(extra: dict[str, str], named: str) -> None:
    """drain.yml stops before touching any host when asked for a host or action it cannot do."""
    result = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            "inventories/lab",
            "playbooks/drain.yml",
            "-e",
            json.dumps({**extra, "ansible_python_interpreter": sys.executable}),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")},
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-2000:]
    assert f"{named} must be" in output, output[-2000:]
    assert "Move the inference host" not in output
