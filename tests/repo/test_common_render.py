"""The common role renders the right files for each supported distribution.

The Molecule scenario runs on Debian 12 only (no Ubuntu image is reachable from the
test machines), so the Ubuntu behaviour is checked here: the role's own templates,
with the role's defaults and its per-distribution variables file chosen by the role
itself, are rendered for fake hosts whose facts come from a jsonfile fact cache in a
temporary directory (written by Ansible itself in a first run, read with
`gather_facts: false` in the second). Everything runs in check mode with --diff on
`ansible_connection: local`: the rendered text is read from the diff events and
nothing is written.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ansible_runner
import pytest
import yaml

from .conftest import ROOT, load_yaml

BIN = Path(sys.executable).parent
ROLE = ROOT / "roles" / "common"
TEMPLATES = sorted(p.name for p in (ROLE / "templates").glob("*.j2"))

FACTS: dict[str, dict[str, Any]] = {
    "ubuntu2204-amd64": {
        "os_family": "Debian",
        "distribution": "Ubuntu",
        "distribution_release": "jammy",
        "distribution_version": "22.04",
        "distribution_major_version": "22",
        "architecture": "x86_64",
    },
    "ubuntu2404-amd64": {
        "os_family": "Debian",
        "distribution": "Ubuntu",
        "distribution_release": "noble",
        "distribution_version": "24.04",
        "distribution_major_version": "24",
        "architecture": "x86_64",
    },
    "ubuntu2404-arm64": {
        "os_family": "Debian",
        "distribution": "Ubuntu",
        "distribution_release": "noble",
        "distribution_version": "24.04",
        "distribution_major_version": "24",
        "architecture": "aarch64",
    },
    "debian12-amd64": {
        "os_family": "Debian",
        "distribution": "Debian",
        "distribution_release": "bookworm",
        "distribution_version": "12.8",
        "distribution_major_version": "12",
        "architecture": "x86_64",
    },
    "rocky9-amd64": {
        "os_family": "RedHat",
        "distribution": "Rocky",
        "distribution_release": "Blue Onyx",
        "distribution_version": "9.4",
        "distribution_major_version": "9",
        "architecture": "x86_64",
    },
}

# Inventory groups of the fake hosts: an arm64 inference host (GH200-like), an
# amd64 inference host, a load balancer and a monitoring host.
GROUPS = {
    "gpu": ["ubuntu2404-amd64", "ubuntu2404-arm64"],
    "lb": ["ubuntu2204-amd64"],
    "monitoring": ["debian12-amd64", "rocky9-amd64"],
}

# The facts the setup module would report (with its ansible_ prefix), stored in
# the fact cache for the next run.
SEED_PLAYBOOK = """
- name: Store the fake facts in the fact cache
  hosts: all
  gather_facts: false
  tasks:
    - name: Cache the facts
      ansible.builtin.set_fact:
        ansible_distribution: "{{ fake_facts.distribution }}"
        ansible_distribution_release: "{{ fake_facts.distribution_release }}"
        ansible_distribution_version: "{{ fake_facts.distribution_version }}"
        ansible_distribution_major_version: "{{ fake_facts.distribution_major_version }}"
        ansible_architecture: "{{ fake_facts.architecture }}"
        ansible_os_family: "{{ fake_facts.os_family }}"
        ansible_system: Linux
        ansible_virtualization_tech_guest: []
        ansible_virtualization_tech_host: []
        cacheable: true
"""

RENDER_PLAYBOOK = """
- name: Render the common role's templates
  hosts: all
  gather_facts: false
  tasks:
    - name: Load the role's defaults and the distribution's variables, as the role does
      ansible.builtin.include_role:
        name: common
        tasks_from: vars.yml
        public: true

    - name: Render the templates
      ansible.builtin.template:
        src: "{{ role_templates }}/{{ item }}"
        dest: "{{ render_dir }}/{{ inventory_hostname }}/{{ item }}"
        mode: "0644"
      loop: "{{ templates }}"

    - name: Report the distribution's choices
      ansible.builtin.debug:
        msg:
          sshd_service: "{{ __common_sshd_service }}"
          sshd_start_units: "{{ __common_sshd_start_units }}"
          apt_sources_format: "{{ __common_apt_sources_format }}"
          apt_deb822_file: "{{ __common_apt_deb822_file }}"
"""


class Rendered:
    """The events of one check-mode run, by host."""

    def __init__(self, events: list[dict[str, Any]], status: str) -> None:
        self.status = status
        self.files: dict[str, dict[str, str]] = {}
        self.choices: dict[str, dict[str, Any]] = {}
        self.failures: dict[str, str] = {}
        for event in events:
            data = event.get("event_data", {})
            host = data.get("host")
            res = data.get("res", {})
            if event["event"] == "runner_item_on_ok" and data.get("task") == "Render the templates":
                after = "".join(d.get("after", "") for d in res.get("diff", []))
                self.files.setdefault(host, {})[res["item"]] = after
            elif (
                event["event"] == "runner_on_ok"
                and data.get("task") == "Report the distribution's choices"
            ):
                self.choices[host] = res["msg"]
            elif event["event"] in ("runner_on_failed", "runner_item_on_failed"):
                self.failures[host] = str(res.get("msg", res))

    def file(self, host: str, template: str) -> str:
        assert host not in self.failures, f"{host}: {self.failures[host]}"
        return self.files[host][template]


def run_local(base: Path, ident: str, playbook: str, **kwargs: Any) -> ansible_runner.Runner:
    """A check-mode run of PLAYBOOK on the fake hosts, sharing one fact cache."""
    inventory = {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
            },
            "children": {
                group: {"hosts": {host: {"fake_facts": FACTS[host]} for host in hosts}}
                for group, hosts in GROUPS.items()
            },
        }
    }
    (base / ident).mkdir()
    return ansible_runner.run(
        private_data_dir=str(base / ident),
        ident=ident,
        fact_cache=str(base / "facts"),
        playbook=yaml.safe_load(playbook),
        inventory=inventory,
        cmdline="--check --diff",
        envvars={
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
            "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
            "ANSIBLE_GATHERING": "smart",
            "ANSIBLE_CACHE_PLUGIN_TIMEOUT": "0",
            # The role reads facts through ansible_facts only.
            "ANSIBLE_INJECT_FACT_VARS": "False",
        },
        quiet=True,
        timeout=300,
        **kwargs,
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rendered]:
    base = tmp_path_factory.mktemp("common-render")
    seed = run_local(base, "seed", SEED_PLAYBOOK)
    assert seed.status == "successful", seed.stdout.read()[-2000:]
    runner = run_local(
        base,
        "render",
        RENDER_PLAYBOOK,
        extravars={
            "role_templates": str(ROLE / "templates"),
            "render_dir": str(base / "never-written"),
            "templates": TEMPLATES,
        },
    )
    yield Rendered(list(runner.events), runner.status)
    assert not (base / "never-written").exists(), "check mode wrote the rendered files"


def test_every_supported_host_renders(rendered: Rendered) -> None:
    for host in FACTS:
        if host.startswith("rocky"):
            continue
        assert host not in rendered.failures, f"{host}: {rendered.failures[host]}"
        assert sorted(rendered.files[host]) == TEMPLATES, host


def test_ubuntu_2404_uses_deb822_with_signed_by(rendered: Rendered) -> None:
    sources = rendered.file("ubuntu2404-amd64", "sources.deb822.j2")
    assert rendered.choices["ubuntu2404-amd64"]["apt_sources_format"] == "deb822"
    assert (
        rendered.choices["ubuntu2404-amd64"]["apt_deb822_file"]
        == "/etc/apt/sources.list.d/ubuntu.sources"
    )
    stanzas = [s for s in sources.split("\n\n") if "Types:" in s]
    assert len(stanzas) == 2, sources
    fields = [
        dict(line.split(": ", 1) for line in s.splitlines() if not line.startswith("#"))
        for s in stanzas
    ]
    assert fields[0] == {
        "Types": "deb",
        "URIs": "http://archive.ubuntu.com/ubuntu",
        "Suites": "noble noble-updates",
        "Components": "main restricted universe multiverse",
        "Signed-By": "/usr/share/keyrings/ubuntu-archive-keyring.gpg",
    }
    assert fields[1]["URIs"] == "http://security.ubuntu.com/ubuntu"
    assert fields[1]["Suites"] == "noble-security"
    assert fields[1]["Signed-By"] == "/usr/share/keyrings/ubuntu-archive-keyring.gpg"
    # sources.list keeps no entry of its own: nothing is read twice.
    one_line = rendered.file("ubuntu2404-amd64", "sources.list.j2")
    assert not re.search(r"(?m)^deb ", one_line), one_line
    assert "/etc/apt/sources.list.d/ubuntu.sources" in one_line


def test_ubuntu_arm64_uses_the_ports_archive(rendered: Rendered) -> None:
    sources = rendered.file("ubuntu2404-arm64", "sources.deb822.j2")
    uris = re.findall(r"(?m)^URIs: (.*)$", sources)
    assert uris == ["http://ports.ubuntu.com/ubuntu-ports"] * 2, sources
    assert "archive.ubuntu.com" not in sources
    assert "security.ubuntu.com" not in sources


def test_ubuntu_2204_keeps_one_line_sources(rendered: Rendered) -> None:
    assert rendered.choices["ubuntu2204-amd64"]["apt_sources_format"] == "one-line"
    lines = [
        line
        for line in rendered.file("ubuntu2204-amd64", "sources.list.j2").splitlines()
        if line and not line.startswith("#")
    ]
    components = "main restricted universe multiverse"
    assert lines == [
        f"deb http://archive.ubuntu.com/ubuntu jammy {components}",
        f"deb http://archive.ubuntu.com/ubuntu jammy-updates {components}",
        f"deb http://security.ubuntu.com/ubuntu jammy-security {components}",
    ]


def test_debian_12_sources_are_unchanged(rendered: Rendered) -> None:
    lines = [
        line
        for line in rendered.file("debian12-amd64", "sources.list.j2").splitlines()
        if line and not line.startswith("#")
    ]
    components = "main contrib non-free non-free-firmware"
    assert lines == [
        f"deb http://deb.debian.org/debian bookworm {components}",
        f"deb http://deb.debian.org/debian bookworm-updates {components}",
        f"deb http://deb.debian.org/debian-security bookworm-security {components}",
    ]


@pytest.mark.parametrize(
    ("host", "units"),
    [
        ("ubuntu2404-amd64", ["ssh.socket"]),
        ("ubuntu2404-arm64", ["ssh.socket"]),
        ("ubuntu2204-amd64", ["ssh.service"]),
        ("debian12-amd64", ["ssh.service"]),
    ],
)
def test_sshd_unit_per_distribution(rendered: Rendered, host: str, units: list[str]) -> None:
    assert host not in rendered.failures, rendered.failures.get(host)
    assert rendered.choices[host]["sshd_start_units"] == units
    # The reload always goes to the service, and only where it runs.
    assert rendered.choices[host]["sshd_service"] == "ssh.service"


def blacklist(text: str) -> list[str]:
    match = re.search(r"Unattended-Upgrade::Package-Blacklist \{(.*?)\};", text, re.S)
    return re.findall(r'"([^"]*)";', match.group(1)) if match else []


def test_unattended_upgrades_blacklist_per_group(rendered: Rendered) -> None:
    gpu = blacklist(rendered.file("ubuntu2404-amd64", "52llmfleet-unattended-upgrades.j2"))
    lb = blacklist(rendered.file("ubuntu2204-amd64", "52llmfleet-unattended-upgrades.j2"))
    other = blacklist(rendered.file("debian12-amd64", "52llmfleet-unattended-upgrades.j2"))
    for pattern in (
        "nvidia-",
        "libnvidia-",
        "cuda-",
        "libnccl",
        "datacenter-gpu-manager",
        "nvidia-fabricmanager",
        "linux-image-",
        "linux-headers-",
        "linux-modules-",
        "linux-generic",
    ):
        assert pattern in gpu, pattern
    assert "nginx" not in gpu and "keepalived" not in gpu
    assert "nginx" in lb and "keepalived" in lb
    assert "nvidia-" not in lb and "linux-image-" not in lb
    assert other == []


def test_no_automatic_reboot_without_a_reboot_time(rendered: Rendered) -> None:
    for host in ("ubuntu2404-amd64", "ubuntu2204-amd64", "debian12-amd64"):
        text = rendered.file(host, "52llmfleet-unattended-upgrades.j2")
        assert 'Unattended-Upgrade::Automatic-Reboot "false";' in text
        assert "Automatic-Reboot-Time" not in text


def test_unsupported_distribution_is_named(rendered: Rendered) -> None:
    message = rendered.failures.get("rocky9-amd64", "")
    assert "Rocky 9.4" in message, message
    assert "Ubuntu 22.04, Ubuntu 24.04 and Debian 12" in message, message
    assert rendered.status == "failed"


def task_names(path: Path) -> set[str]:
    tasks = load_yaml(path)
    assert isinstance(tasks, list)
    return {task["name"] for task in tasks}


def test_sshd_tag_lists_only_the_sshd_tasks(tmp_path: Path) -> None:
    """`--tags common_sshd` reaches the sshd tasks, and of the role only those, its checks and
    the package-list fetch a never-converged host needs."""
    runner = ansible_runner.run(
        private_data_dir=str(tmp_path),
        project_dir=str(ROOT),
        playbook="site.yml",
        inventory=str(ROOT / "inventories" / "lab"),
        cmdline="--list-tasks --tags common_sshd",
        envvars={
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
            "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
        },
        quiet=True,
        timeout=120,
    )
    output = runner.stdout.read()
    assert runner.rc == 0, output[-2000:]
    listed = set(re.findall(r"(?m)^\s+common : (.+?)\s+TAGS:", output))
    sshd = task_names(ROLE / "tasks" / "sshd.yml")
    checks = (
        task_names(ROLE / "tasks" / "vars.yml")
        | task_names(ROLE / "tasks" / "assert.yml")
        | task_names(ROLE / "tasks" / "apt_lists.yml")
    )
    assert sshd <= listed, f"not listed: {sshd - listed}\n{output}"
    validation = {name for name in listed if name.startswith("Validating arguments")}
    assert listed - sshd - checks - validation == set(), output
