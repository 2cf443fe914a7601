"""The Podman connection with pipelining, entering the container directly when root.

containers.podman.podman turns pipelining off, so every task costs a temporary
directory, a copy, a chmod, a run and a clean-up, five `podman exec` calls. Fed on
stdin, the module needs one.

`podman exec` itself costs about 0.25 s (conmon, then runc exec), several times what
a module needs. Run as root, this plugin enters the container's namespaces with
`nsenter` instead, with the container's environment, which does the same in a few
milliseconds. The container's PID is looked up with `podman inspect` once and kept
in a small cache file with the process's start time, so a restarted or recreated
container is looked up again. Files go through the same entered process (`cat`), so
paths resolve inside the container as `podman cp` resolves them. Not root, or with a
remote user, it falls back to `podman exec`.

Used by the Molecule scenarios and the lab (ansible_connection: podman_pipelined with
ansible_pipelining: true); this directory is on the connection plugin path there.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from ansible.errors import AnsibleError
from ansible.module_utils.common.text.converters import to_bytes, to_native
from ansible_collections.containers.podman.plugins.connection.podman import (
    DOCUMENTATION as _PODMAN_DOCUMENTATION,
)
from ansible_collections.containers.podman.plugins.connection.podman import (
    Connection as PodmanConnection,
)

DOCUMENTATION = _PODMAN_DOCUMENTATION.replace("name: podman", "name: podman_pipelined", 1)

CACHE_DIR = Path(tempfile.gettempdir()) / f"podman-pipelined-{os.geteuid()}"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the fields after it do not.
    return stat.rsplit(")", 1)[1].split()[19]


class Connection(PodmanConnection):
    """containers.podman.podman, with the module fed on stdin, through nsenter as root."""

    transport = "podman_pipelined"
    has_pipelining = True

    def _connect(self) -> Connection:
        # No `podman mount`: files go through the entered process.
        self._connected = True
        return self

    def _direct(self) -> bool:
        return os.geteuid() == 0 and not self.user and shutil.which("nsenter") is not None

    def _target(self) -> dict[str, Any]:
        """The container's PID and environment, from the cache while the process lives."""
        name = str(self._container_id)
        cache = CACHE_DIR / name.replace("/", "_")
        try:
            target = json.loads(cache.read_text(encoding="utf-8"))
            if _start_time(target["pid"]) == target["start"]:
                return target
        except (OSError, ValueError, KeyError, TypeError):
            pass
        fmt = "{{json .State.Pid}} {{json .Config.Env}}"
        rc, out, err = self._podman(["inspect", "--format", fmt])
        if rc != 0:
            raise AnsibleError(f"podman inspect {name}: {to_native(err).strip()}")
        pid_text, env_text = to_native(out).strip().split(" ", 1)
        pid = int(pid_text)
        start = _start_time(pid)
        if pid <= 0 or start is None:
            raise AnsibleError(f"container {name} is not running")
        target = {"pid": pid, "start": start, "env": json.loads(env_text) or []}
        CACHE_DIR.mkdir(mode=0o700, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}")
        tmp.write_text(json.dumps(target), encoding="utf-8")
        tmp.replace(cache)
        return target

    def _nsenter(self, args: list[str], in_data: bytes | None) -> tuple[int, bytes, bytes]:
        target = self._target()
        argv = ["nsenter", "--target", str(target["pid"]), "--all", "--wd=/"]
        argv += ["env", "-i", *target["env"], *args]
        proc = subprocess.run(
            [to_bytes(a, errors="surrogate_or_strict") for a in argv],
            input=in_data,
            capture_output=True,
            check=False,
        )
        return proc.returncode, proc.stdout, proc.stderr

    def exec_command(
        self, cmd: str, in_data: bytes | None = None, sudoable: bool = False
    ) -> tuple[int, bytes, bytes]:
        if not self._connected:
            self._connect()
        args = shlex.split(to_native(cmd, errors="surrogate_or_strict"))
        if self._direct():
            return self._nsenter(args, in_data)
        exec_args = ["exec", "-i"] if in_data is not None else ["exec"]
        if self.user:
            exec_args.extend(("--user", self.user))
        return self._podman(exec_args, args, in_data)

    def put_file(self, in_path: str, out_path: str) -> None:
        if not self._direct():
            super()._connect()
            return super().put_file(in_path, out_path)
        with open(to_bytes(in_path, errors="surrogate_or_strict"), "rb") as source:
            data = source.read()
        rc, _, err = self._nsenter(["sh", "-c", 'cat > "$1"', "put_file", out_path], data)
        if rc != 0:
            where = f"{out_path} in {self._container_id}"
            raise AnsibleError(f"could not write {where}: {to_native(err)}")

    def fetch_file(self, in_path: str, out_path: str) -> None:
        if not self._direct():
            super()._connect()
            return super().fetch_file(in_path, out_path)
        rc, data, err = self._nsenter(["cat", in_path], None)
        if rc != 0:
            where = f"{in_path} in {self._container_id}"
            raise AnsibleError(f"could not read {where}: {to_native(err)}")
        with open(to_bytes(out_path, errors="surrogate_or_strict"), "wb") as dest:
            dest.write(data)
