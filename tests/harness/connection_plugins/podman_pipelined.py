"""The Podman connection with pipelining: a module runs in one `podman exec -i`.

containers.podman.podman turns pipelining off, so every task costs a temporary
directory, a copy, a chmod, a run and a clean-up, five `podman exec` calls of about
0.2 s each. Fed on stdin, the module needs one. File transfers (copy, template) still
go through the container's mounted filesystem, as in the parent plugin.

Used by the Molecule scenarios and the lab (ansible_connection: podman_pipelined with
ansible_pipelining: true); this directory is on the connection plugin path there.
"""

from __future__ import annotations

import shlex

from ansible.module_utils.common.text.converters import to_native
from ansible_collections.containers.podman.plugins.connection.podman import (
    DOCUMENTATION as _PODMAN_DOCUMENTATION,
)
from ansible_collections.containers.podman.plugins.connection.podman import (
    Connection as PodmanConnection,
)

DOCUMENTATION = _PODMAN_DOCUMENTATION.replace("name: podman", "name: podman_pipelined", 1)


class Connection(PodmanConnection):
    """containers.podman.podman, with the module fed on stdin."""

    transport = "podman_pipelined"
    has_pipelining = True

    def exec_command(
        self, cmd: str, in_data: bytes | None = None, sudoable: bool = False
    ) -> tuple[int, bytes, bytes]:
        if not self._connected:
            self._connect()
        args = shlex.split(to_native(cmd, errors="surrogate_or_strict"))
        exec_args = ["exec", "-i"] if in_data is not None else ["exec"]
        if self.user:
            exec_args.extend(("--user", self.user))
        return self._podman(exec_args, args, in_data)
