"""The scenarios' playbook driver reports which task failed, where, and why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT

DRIVER = ROOT / "molecule/shared/files/run_playbook.py"

# Asserts only: nothing on this machine changes.
PLAYBOOK = """\
- name: Take a request
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Accept any request
      ansible.builtin.assert:
        that: true
        quiet: true
    - name: Refuse a bad request
      ansible.builtin.assert:
        that: request == 'good'
        fail_msg: "request must be good (got {{ request }})"
        quiet: true
      tags: [refuse]
    - name: Run in check mode only
      ansible.builtin.assert:
        that: ansible_check_mode
      tags: [check]
- name: Act on the request
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Never reached
      ansible.builtin.assert:
        that: true
"""


def drive(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "play.yml").write_text(PLAYBOOK, encoding="utf-8")
    (tmp_path / "hosts.yml").write_text(
        "all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
        f"      ansible_python_interpreter: {sys.executable}\n",
        encoding="utf-8",
    )
    return subprocess.run(
        [sys.executable, str(DRIVER), "--inventory", "hosts.yml", *args, "--out", "out.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")},
        timeout=120,
    )


def test_summary_names_the_failed_task(tmp_path: Path) -> None:
    result = drive(
        tmp_path,
        "--playbook",
        "play.yml",
        "--extra-vars",
        '{"request": "bad"}',
        "--extra-vars",
        '{"request": "worse"}',
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    assert summary["rc"] != 0
    assert summary["status"] == "failed"
    assert summary["failed"] == [
        {
            "host": "localhost",
            "task": "Refuse a bad request",
            "play": "Take a request",
            "msg": "request must be good (got worse)",
        }
    ]
    assert summary["changed"] == []
    assert [(t["task"], t["status"]) for t in summary["tasks"]] == [
        ("Accept any request", "ok"),
        ("Refuse a bad request", "failed"),
    ]
    assert summary["stats"]["failures"] == {"localhost": 1}
    # Ansible's own output stays visible to whoever runs the driver.
    assert "Refuse a bad request" in result.stdout


def test_check_and_tags_reach_the_playbook(tmp_path: Path) -> None:
    result = drive(
        tmp_path,
        "--playbook",
        "play.yml",
        "--extra-vars",
        '{"request": "good"}',
        "--check",
        "--tags",
        "refuse,check",
        "--limit",
        "localhost",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    assert (summary["rc"], summary["status"], summary["failed"]) == (0, "successful", [])
    assert [t["task"] for t in summary["tasks"]] == [
        "Refuse a bad request",
        "Run in check mode only",
    ]


def test_a_run_that_cannot_start_fails(tmp_path: Path) -> None:
    result = drive(tmp_path, "--playbook", "missing.yml")
    assert result.returncode != 0
    assert "missing.yml does not exist" in result.stderr
    assert not (tmp_path / "out.json").exists()
