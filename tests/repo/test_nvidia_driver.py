"""The nvidia_driver role's choices on releases and sources the test machines cannot
install from (the Ubuntu archive and NVIDIA's CUDA repository are not reachable):
the packages it would install, the deb822 source and its keyring, and the branch pin,
rendered from the role's own variables and templates for faked hosts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import ROOT
from .playbook_runner import run_playbook

PLAYBOOK = """\
- name: Render the driver's choices
  hosts: all
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  tasks:
    - name: Fake the host's facts
      ansible.builtin.set_fact:
        ansible_distribution: "{{ fake.distribution }}"
        ansible_distribution_version: "{{ fake.version }}"
        ansible_distribution_major_version: "{{ fake.version.split('.')[0] }}"
        ansible_architecture: "{{ fake.architecture }}"
        ansible_kernel: "{{ fake.kernel }}"
        cacheable: true

    - name: Load the role's variables for the release
      ansible.builtin.include_role:
        name: nvidia_driver
        tasks_from: vars
        public: true

    - name: Report
      ansible.builtin.copy:
        dest: "{{ lookup('env', 'NVIDIA_DRIVER_OUT') }}/{{ inventory_hostname }}.json"
        mode: "0644"
        content: "{{ {'packages': __nvidia_driver_packages,
                  'sources': lookup('template', templates ~ '/nvidia-cuda.sources.j2'),
                  'pref': lookup('template', templates ~ '/nvidia-driver.pref.j2'),
                  'module': __nvidia_driver_kernel_module_file,
                  'checked': __nvidia_driver_checked_package} | to_json }}"
      vars:
        __nvidia_driver_fabricmanager_wanted: "{{ fake.fabricmanager | default(false) }}"
        templates: "{{ lookup('ansible.builtin.env', 'NVIDIA_DRIVER_TEMPLATES') }}"
"""

HOSTS = {
    "jammy": {"distribution": "Ubuntu", "version": "22.04", "architecture": "x86_64"},
    "noble-dkms": {
        "distribution": "Ubuntu",
        "version": "24.04",
        "architecture": "x86_64",
        "vars": {"nvidia_driver_ubuntu_signed_modules": False},
    },
    "bookworm": {"distribution": "Debian", "version": "12.8", "architecture": "x86_64"},
    "bookworm-cuda": {
        "distribution": "Debian",
        "version": "12.8",
        "architecture": "x86_64",
        "fabricmanager": True,
        "vars": {"nvidia_driver_source": "cuda_repo"},
    },
    "jammy-arm-cuda": {
        "distribution": "Ubuntu",
        "version": "22.04",
        "architecture": "aarch64",
        "vars": {
            "nvidia_driver_source": "cuda_repo",
            "nvidia_driver_branch": "550",
            "nvidia_driver_cuda_repo_base_url": "http://mirror.internal/cuda/repos",
        },
    },
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    root: Path = tmp_path_factory.mktemp("nvidia_driver")
    hosts = {
        name: {"fake": {**h, "kernel": "6.8.0-49-generic"}, **h.get("vars", {})}
        for name, h in HOSTS.items()
    }
    out = root / "out"
    out.mkdir()
    inventory = root / "hosts.yml"
    inventory.write_text(json.dumps({"all": {"hosts": hosts}}), encoding="utf-8")
    playbook = root / "play.yml"
    playbook.write_text(PLAYBOOK, encoding="utf-8")
    result = run_playbook(
        root / "runner",
        playbook,
        inventory=inventory,
        envvars={
            "ANSIBLE_INJECT_FACT_VARS": "False",
            "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
            "NVIDIA_DRIVER_TEMPLATES": str(ROOT / "roles" / "nvidia_driver" / "templates"),
            "NVIDIA_DRIVER_OUT": str(out),
        },
    )
    assert not result.failed, result.tail()
    return {name: json.loads((out / f"{name}.json").read_text()) for name in HOSTS}


def test_ubuntu_takes_the_signed_prebuilt_server_modules(rendered):
    r = rendered["jammy"]
    assert r["packages"] == [
        "nvidia-headless-no-dkms-535-server",
        "nvidia-utils-535-server",
        "linux-modules-nvidia-535-server-generic",
    ]
    assert r["module"] == "nvidia" and r["checked"] == "nvidia-utils-535-server"


def test_ubuntu_without_signed_modules_builds_with_dkms_against_the_running_kernel(rendered):
    packages = rendered["noble-dkms"]["packages"]
    assert "nvidia-dkms-535-server" in packages
    assert "linux-headers-6.8.0-49-generic" in packages
    assert not [p for p in packages if p.startswith("linux-modules-nvidia")]


def test_debian_takes_non_free_with_dkms(rendered):
    r = rendered["bookworm"]
    assert {"nvidia-kernel-dkms", "nvidia-smi", "libcuda1", "nvidia-persistenced"} <= set(
        r["packages"]
    )
    assert "linux-headers-6.8.0-49-generic" in r["packages"]
    assert r["module"] == "nvidia-current"
    assert "Pin: version 535.*" in r["pref"] and "Pin-Priority: 1001" in r["pref"]


def test_cuda_repository_is_a_deb822_source_with_its_own_key(rendered):
    r = rendered["bookworm-cuda"]
    assert "cuda-drivers-535" in r["packages"]
    assert "cuda-drivers-fabricmanager-535" in r["packages"]
    sources = r["sources"]
    assert (
        "URIs: https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/" in sources
    )
    assert "Signed-By: /etc/apt/keyrings/nvidia-cuda.asc" in sources
    assert "Suites: /" in sources


def test_mirror_branch_and_arm_architecture(rendered):
    r = rendered["jammy-arm-cuda"]
    # NVIDIA's repository builds the module with DKMS, against the running kernel.
    assert r["packages"] == ["cuda-drivers-550", "linux-headers-6.8.0-49-generic"]
    assert "URIs: http://mirror.internal/cuda/repos/ubuntu2204/sbsa/" in r["sources"]
    assert "Pin: version 550.*" in r["pref"]
    assert r["checked"] == "cuda-drivers-550"
