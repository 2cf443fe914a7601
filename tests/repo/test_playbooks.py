"""The playbooks hang together and refuse what they cannot do."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .conftest import ROOT, load_yaml
from .playbook_runner import run_playbook


def test_site_imports_existing_group_playbooks() -> None:
    site = load_yaml(ROOT / "site.yml")
    imported = [play["ansible.builtin.import_playbook"] for play in site]
    assert imported, "site.yml imports nothing"
    for path in imported:
        assert (ROOT / path).is_file(), f"site.yml imports missing {path}"
        assert path.startswith("playbooks/")


@pytest.mark.parametrize(
    ("extra", "task", "named"),
    [
        ({"drain_host": "lb1"}, "Check drain_host", "drain_host must be"),
        (
            {"drain_host": "gpu1", "drain_action": "off"},
            "Check drain_action",
            "drain_action must be",
        ),
    ],
)
def test_drain_refuses_a_bad_request(
    extra: dict[str, str], task: str, named: str, tmp_path: Path
) -> None:
    """drain.yml stops before touching any host when asked for a host or action it cannot do."""
    result = run_playbook(
        tmp_path,
        "playbooks/drain.yml",
        inventory="inventories/lab",
        extravars={**extra, "ansible_python_interpreter": sys.executable},
    )
    assert result.rc != 0, result.tail()
    assert [(r.host, r.task) for r in result.failed] == [("localhost", task)], result.tail()
    assert named in result.failed[0].msg, result.failed[0].msg
    assert result.in_play("Move the inference host") == [], result.tail()
    assert "Move the inference host" not in result.plays
    assert result.changed == []
