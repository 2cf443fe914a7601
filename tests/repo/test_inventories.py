"""The inventories load cleanly, and prod and staging give the roles what they need to deploy."""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, load_yaml
from .playbook_runner import BIN, run_playbook

INVENTORIES = ["prod", "staging", "lab"]
# The inventories meant for real hosts; the lab runs on local containers.
DEPLOYABLE = ["prod", "staging"]
DOC_RANGES = [ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("198.51.100.0/24")]
VAULT_EXAMPLE = "vault.yml.example"

# What a role cannot do without, beyond its required options: the inventory sets
# these for every host the role runs on, and none is empty.
ROLE_NEEDS: dict[str, list[str]] = {
    "common": ["common_ntp_servers", "common_operator_user", "common_operator_authorized_keys"],
    "llmserve": [
        "llmserve_model_name",
        "llmserve_model_source",
        "llmserve_package",
        "llmserve_api_keys",
    ],
    "nginx": ["nginx_server_name"],
    "keepalived": [
        "keepalived_virtual_ipaddresses",
        "keepalived_virtual_router_id",
        "keepalived_priority",
        "keepalived_unicast_src_ip",
    ],
}


@functools.cache
def ansible_inventory(path: Path) -> tuple[dict, str]:
    """ansible-inventory --list of an inventory: the data and what it printed on stderr."""
    result = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", str(path), "--list"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")},
        timeout=120,
    )
    return json.loads(result.stdout), result.stderr


def inventory(name: str) -> dict:
    return ansible_inventory(ROOT / "inventories" / name)[0]


def hosts_of(data: dict, group: str) -> list[str]:
    """Hosts of a group and of its children."""
    entry = data.get(group, {})
    hosts = list(entry.get("hosts", []))
    for child in entry.get("children", []):
        hosts += hosts_of(data, child)
    return list(dict.fromkeys(hosts))


def roles_by_group() -> dict[str, list[str]]:
    """The roles site.yml applies to each host group (plays on the controller aside)."""
    found: dict[str, list[str]] = {}
    for entry in load_yaml(ROOT / "site.yml"):
        for play in load_yaml(ROOT / entry["ansible.builtin.import_playbook"]):
            if play["hosts"] == "localhost":
                continue
            roles = [r["role"] if isinstance(r, dict) else r for r in play.get("roles", [])]
            found.setdefault(play["hosts"], []).extend(roles)
    return found


def role_options(role: str) -> dict[str, dict]:
    specs = load_yaml(ROOT / "roles" / role / "meta/argument_specs.yml")
    return specs["argument_specs"]["main"]["options"]


def vault_examples(name: str) -> dict[str, object]:
    """Every variable the inventory's vault examples declare."""
    declared: dict[str, object] = {}
    for path in sorted((ROOT / "inventories" / name).rglob(VAULT_EXAMPLE)):
        declared.update(load_yaml(path))
    return declared


def test_site_covers_the_groups() -> None:
    assert set(roles_by_group()) == {"gpu", "lb", "monitoring"}


@pytest.mark.parametrize("name", INVENTORIES)
def test_inventory_has_the_groups(name: str) -> None:
    data = inventory(name)
    for group in ("gpu", "lb", "monitoring"):
        assert group in data["all"]["children"], f"{name}: no group {group}"
    assert len(hosts_of(data, "lb")) >= 2, f"{name}: the VIP needs two load balancers"
    # A drain, a rolling update or a restart takes one out only while another serves.
    assert len(hosts_of(data, "gpu")) >= 2, f"{name}: needs two inference hosts"


@pytest.mark.parametrize("name", INVENTORIES)
def test_inventory_loads_without_warnings(name: str) -> None:
    _, stderr = ansible_inventory(ROOT / "inventories" / name)
    assert "WARNING" not in stderr, f"{name}:\n{stderr}"


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_uses_documentation_addresses(name: str) -> None:
    hostvars = inventory(name)["_meta"]["hostvars"]
    assert hostvars
    for host, hv in hostvars.items():
        addresses = [hv["ansible_host"], *hv.get("keepalived_virtual_ipaddresses", [])]
        if "keepalived_unicast_src_ip" in hv:
            addresses.append(hv["keepalived_unicast_src_ip"])
        for address in addresses:
            addr = ipaddress.ip_interface(address).ip
            assert any(addr in net for net in DOC_RANGES), (
                f"{name}: {host}: {addr} is not a documentation address"
            )


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_the_roles_get_what_they_need(name: str) -> None:
    data = inventory(name)
    hostvars = data["_meta"]["hostvars"]
    for group, roles in roles_by_group().items():
        for role in roles:
            required = [o for o, spec in role_options(role).items() if spec.get("required")]
            for host in hosts_of(data, group):
                for var in required + ROLE_NEEDS.get(role, []):
                    assert hostvars[host].get(var) not in (None, "", []), (
                        f"{name}: {host} ({group}, role {role}) does not set {var}"
                    )


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_the_certificate_is_named_unless_self_signed(name: str) -> None:
    data = inventory(name)
    for host in hosts_of(data, "lb"):
        hv = data["_meta"]["hostvars"][host]
        if hv.get("nginx_tls_selfsigned", False):
            continue
        for var in ("nginx_tls_certificate", "nginx_tls_certificate_key"):
            # The role's default path is for labs; real hosts get their PKI's files.
            assert str(hv.get(var, "")).startswith("/"), f"{name}: {host} does not set {var}"


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_one_vrrp_group(name: str) -> None:
    data = inventory(name)
    lbs = hosts_of(data, "lb")
    hostvars = [data["_meta"]["hostvars"][h] for h in lbs]
    assert len({hv["keepalived_virtual_router_id"] for hv in hostvars}) == 1
    assert len({tuple(hv["keepalived_virtual_ipaddresses"]) for hv in hostvars}) == 1
    assert 1 <= hostvars[0]["keepalived_virtual_router_id"] <= 255
    priorities = [hv["keepalived_priority"] for hv in hostvars]
    assert all(1 <= p <= 254 for p in priorities), priorities
    assert len(set(priorities)) == len(priorities), f"{name}: equal priorities {priorities}"
    sources = [hv["keepalived_unicast_src_ip"] for hv in hostvars]
    assert len(set(sources)) == len(sources), f"{name}: shared VRRP source addresses {sources}"


def test_staging_and_prod_do_not_share_a_vip() -> None:
    def vrrp(name: str) -> tuple[set[str], set[int]]:
        data = inventory(name)
        hostvars = [data["_meta"]["hostvars"][h] for h in hosts_of(data, "lb")]
        vips = {v for hv in hostvars for v in hv["keepalived_virtual_ipaddresses"]}
        return vips, {hv["keepalived_virtual_router_id"] for hv in hostvars}

    prod_vips, prod_ids = vrrp("prod")
    staging_vips, staging_ids = vrrp("staging")
    assert not prod_vips & staging_vips
    assert not prod_ids & staging_ids


def test_staging_sets_what_prod_sets() -> None:
    """Staging deploys like production: each group sets at least the same variables."""
    prod, staging = inventory("prod"), inventory("staging")

    def set_for(data: dict, group: str) -> set[str]:
        hostvars = [set(data["_meta"]["hostvars"][h]) for h in hosts_of(data, group)]
        return set.intersection(*hostvars) if hostvars else set()

    for group in roles_by_group():
        missing = set_for(prod, group) - set_for(staging, group)
        assert not missing, f"staging {group} lacks {sorted(missing)}"


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_vault_variables_have_an_example(name: str) -> None:
    """Every vault_ variable the inventory refers to is in its vault example, usable as is."""
    hostvars = inventory(name)["_meta"]["hostvars"]
    referred = {
        ref for hv in hostvars.values() for ref in re.findall(r"\bvault_\w+", json.dumps(hv))
    }
    declared = vault_examples(name)
    assert referred, f"{name}: no secret comes from a vault"
    assert referred <= set(declared), f"{name}: {sorted(referred - set(declared))} have no example"
    for key in declared["vault_llmserve_api_keys"]:
        assert re.fullmatch(r"[!-~]{16,}", key), key


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_values_pass_the_role_checks(name: str, tmp_path: Path) -> None:
    """With its vault examples filled in, the values the inventory sets pass the argument
    specs (types, choices) of the roles they feed, templates resolved."""
    copy = tmp_path / name
    shutil.copytree(ROOT / "inventories" / name, copy)
    for example in copy.rglob(VAULT_EXAMPLE):
        shutil.copy(example, example.with_name("vault.yml"))
    plays: list[dict] = []
    for group, roles in roles_by_group().items():
        for role in roles:
            # Only what the inventory sets is checked: the roles' own defaults are theirs.
            spec = {
                option: {k: v for k, v in attrs.items() if k != "default"}
                for option, attrs in role_options(role).items()
            }
            task = {
                "name": f"Check the {role} settings",
                "ansible.builtin.validate_argument_spec": {"argument_spec": spec},
            }
            plays.append(
                {
                    "name": f"{role} on {group}",
                    "hosts": group,
                    "gather_facts": False,
                    "tasks": [task],
                }
            )
    playbook = tmp_path / "check.yml"
    playbook.write_text(yaml.safe_dump(plays, sort_keys=False), encoding="utf-8")
    # The checks are actions on this machine; no host is contacted.
    result = run_playbook(
        tmp_path / "runner", playbook, inventory=copy, extravars={"ansible_connection": "local"}
    )
    assert result.rc == 0, [(r.host, r.task, r.msg) for r in result.failed] or result.tail()
    checked = {(r.host, r.task) for r in result.results if r.status == "ok"}
    data = inventory(name)
    for group, roles in roles_by_group().items():
        for host in hosts_of(data, group):
            for role in roles:
                assert (host, f"Check the {role} settings") in checked, (host, role)


@pytest.mark.parametrize("name", INVENTORIES)
def test_site_syntax(name: str, tmp_path: Path) -> None:
    result = run_playbook(
        tmp_path, "site.yml", inventory=f"inventories/{name}", cmdline=["--syntax-check"]
    )
    assert result.rc == 0, result.tail()
    assert "WARNING" not in result.stdout, result.tail()
