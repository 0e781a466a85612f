"""What /proc says about processes and CPUs: CPU seconds and RSS of a process, per-CPU busy
time, and finding a server's process (MariaDB) by name and listening port."""

from __future__ import annotations

import os
import resource
import urllib.parse

CLK_TCK = os.sysconf("SC_CLK_TCK")
OPEN_FILES = 200_000  # 10,000 idle connections need more than the usual 1,024


def raise_nofile() -> None:
    """Raise this process's open-files limit (to the hard limit when it is lower)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return float("nan")


def proc_rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def cpu_times() -> dict[int, tuple[float, float]]:
    """Per CPU: (busy, total) jiffies from /proc/stat."""
    out: dict[int, tuple[float, float]] = {}
    try:
        with open("/proc/stat") as handle:
            for line in handle:
                if line.startswith("cpu") and line[3:4].isdigit():
                    name, *values = line.split()
                    numbers = [int(v) for v in values[:8]]
                    total = sum(numbers)
                    out[int(name[3:])] = (total - numbers[3] - numbers[4], total)
    except OSError:
        pass
    return out


def busy_pct(before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]], cpu: int) -> float:
    if cpu not in before or cpu not in after:
        return float("nan")
    busy = after[cpu][0] - before[cpu][0]
    total = after[cpu][1] - before[cpu][1]
    return busy / total * 100 if total else float("nan")


def find_pid(names: tuple[str, ...], port: int | None = None) -> int | None:
    """The process named one of ``names``; with ``port``, the one listening on that TCP port."""
    inodes: set[str] = set()
    if port is not None:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                with open(table) as handle:
                    for line in list(handle)[1:]:
                        cols = line.split()
                        if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                            inodes.add(f"socket:[{cols[9]}]")
            except OSError:
                continue
    candidates = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as handle:
                if handle.read().strip() not in names:
                    continue
        except OSError:
            continue
        candidates.append(int(entry))
        if inodes:
            try:
                fds = os.listdir(f"/proc/{entry}/fd")
            except OSError:
                continue
            for fd in fds:
                try:
                    if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                        return int(entry)
                except OSError:
                    continue
    return candidates[0] if len(candidates) == 1 else None


def mysql_port(url: str) -> int | None:
    parts = urllib.parse.urlsplit(url)
    if "unix_socket" in parts.query:
        return None
    return parts.port or 3306


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (PostgreSQL's backends under its postmaster)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


class DatabaseCPU:
    """CPU seconds of the database server behind ``url``: MariaDB's one process, or PostgreSQL's
    postmaster and every backend under it (a backend that exited takes its seconds along:
    gchat's pooled connections live as long as the server under test)."""

    def __init__(self, url: str) -> None:
        self.postgresql = urllib.parse.urlsplit(url).scheme in ("postgresql", "postgres")
        if self.postgresql:
            port = urllib.parse.urlsplit(url).port or 5432
            self.pid = find_pid(("postgres", "postmaster"), port)
        else:
            self.pid = find_pid(("mariadbd", "mysqld"), mysql_port(url))
        self.name = "PostgreSQL" if self.postgresql else "MariaDB"

    def seconds(self) -> float:
        if self.pid is None:
            return float("nan")
        total = proc_cpu(self.pid)
        if self.postgresql:
            total += sum(proc_cpu(child) for child in children(self.pid))
        return total
