"""Small filesystems for the e2e tests: a tmpfs that only one daemon sees.

The daemon is started inside its own mount namespace (``unshare --mount --propagation private``), where a
tmpfs of the given size is mounted on a directory of the test's before the daemon is exec'ed.  The test sees
that filesystem through ``/proc/PID/root`` and changes it from inside the namespace with
``nsenter --mount=/proc/PID/ns/mnt`` (filling it up, giving space back).  Nothing is mounted in the test's
own namespace, so there is nothing to unmount: the tmpfs goes away with the daemon.

Needs root (the suite runs as root) and util-linux's ``unshare`` and ``nsenter``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

TOOLS = ("unshare", "nsenter", "mount", "dd", "truncate", "rm")

# Run by sh inside the new namespace: mount the tmpfs, then become the daemon (same pid as the Popen).
_MOUNT_THEN_EXEC = 'mount -t tmpfs -o "size=$1,mode=0755" zmqsec-test "$2" && shift 2 && exec "$@"'


def missing_tools() -> str | None:
    """Why a private tmpfs cannot be made on this machine (the tools that are missing), or None if it can."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    return f"needs {', '.join(missing)} (util-linux, coreutils) for a private tmpfs" if missing else None


@dataclass
class PrivateTmpfs:
    """A daemon running in a mount namespace of its own, with a tmpfs mounted on ``mountpoint`` there."""

    proc: subprocess.Popen
    mountpoint: Path

    @property
    def pid(self) -> int:
        """The daemon's pid (``unshare`` and ``sh`` exec into it)."""
        return self.proc.pid

    def inside(self, *parts: str) -> Path:
        """``mountpoint/PARTS`` as the daemon sees it, for the test to read: through ``/proc/PID/root``."""
        return Path(f"/proc/{self.pid}/root").joinpath(self.mountpoint.relative_to("/"), *parts)

    def mounted(self) -> bool:
        """Is the tmpfs mounted in the daemon's namespace yet (the daemon may still be starting)?"""
        try:
            mounts = Path(f"/proc/{self.pid}/mountinfo").read_text()
        except OSError:
            return False
        return any(line.split()[4] == str(self.mountpoint) and " - tmpfs " in line for line in mounts.splitlines())

    def run(self, *argv: str | os.PathLike, check: bool = True) -> subprocess.CompletedProcess:
        """``ARGV`` in the daemon's mount namespace (``nsenter --mount``), its output captured."""
        return subprocess.run(["nsenter", f"--mount=/proc/{self.pid}/ns/mnt", *map(str, argv)],
                              capture_output=True, text=True, check=check)

    def free_bytes(self) -> int:
        """Bytes an unprivileged writer could still put on the tmpfs."""
        st = os.statvfs(self.inside())
        return st.f_bavail * st.f_frsize

    def fill(self, name: str = "filler", *, leave: int = 0) -> int:
        """Fill the tmpfs with the file ``name`` (zeros, written until ENOSPC), then give ``leave`` bytes back;
        returns the filler's size.  The daemon finds the filesystem full once ``leave`` bytes are used."""
        path = self.mountpoint / name
        done = self.run("dd", "if=/dev/zero", f"of={path}", "bs=64k", check=False)
        if "No space left on device" not in done.stderr:
            raise AssertionError(f"dd did not fill {path}: {done.stderr.strip()}")
        if leave:
            self.run("truncate", "--size", f"-{leave}", path)
        return os.stat(self.inside(name)).st_size

    def remove(self, name: str = "filler") -> None:
        """Delete ``name`` on the tmpfs, from inside the namespace: the space comes back."""
        self.run("rm", "-f", self.mountpoint / name)


def start(argv: list[str | os.PathLike], mountpoint: Path, size: str, *, log: Path) -> PrivateTmpfs:
    """Start ``ARGV`` in a private mount namespace where a tmpfs of ``size`` (``"1m"``, ``"512k"``) is mounted on
    ``mountpoint`` (made here if missing), with stdout and stderr appended to ``log``."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", _MOUNT_THEN_EXEC, "sh",
                             size, str(mountpoint), *map(str, argv)],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    return PrivateTmpfs(proc, mountpoint)
