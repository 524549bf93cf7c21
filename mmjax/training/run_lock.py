"""One training job per run folder: a lock file that names its holder.

    <workdir>/run.lock    {"host": "tpu-vm-3", "pid": 4121, "started": "2026-12-03T06:20:11+00:00", ...}

Two jobs writing one run folder interleave their metrics, overwrite each other's checkpoints and
resume from states neither of them wrote. A relaunched job while the old one still runs is common
(a scheduler retrying a job it thinks is lost, a preemptible VM coming back, a second terminal), so
`train.py` takes this lock before it writes anything and a second job refuses at start, naming the
holder.

How a holder is recognised as alive, in order:
  1. The kernel's lock. The holder keeps an exclusive `flock` on `run.lock` for as long as it runs;
     the kernel drops it when the process ends for any reason (a clean exit, an exception,
     `kill -9`), so on a local disk, or a network filesystem whose locks reach every host, a
     second job sees a live holder at once and nothing is left behind by a crash.
  2. The record. While holding the lock, the job writes who it is into the file and clears it when
     it ends cleanly. A record left in an unlocked file is a job that ended without clearing it
     (`kill -9`, a lost machine, power loss) or a filesystem that does not share locks between
     hosts (some network and FUSE filesystems accept `flock` and keep it to one host). The record
     tells which: on the same host, the holder is alive if a process with its pid and start time
     still runs (after a reboot, none does); on another host, it is alive while it keeps the file
     fresh, which it does every `heartbeat_s` seconds; a record untouched for `stale_after_s` is a
     job that died there.
A dead holder's lock is stale: it is taken over with a warning naming the job that left it.

Multi-host jobs take the lock once, in process 0, for every process of the job: the processes of
one job share the folder by design (each writes its shards of a checkpoint). Evaluation
(`eval.py`) takes no lock at all: it only reads checkpoints and writes its own result files
(atomically), so it may run beside a training job, and a lock of its own, even a shared one, would
make a training job that starts during an evaluation wait or refuse.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

LOCK_NAME = "run.lock"


class RunFolderLocked(RuntimeError):
    """Another live job holds the run folder."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a run folder, as written in its lock file."""

    host: str
    pid: int
    started: str  # ISO 8601, UTC
    boot_id: str = ""  # the kernel's id of this boot: a pid from before a reboot is not alive
    start_ticks: int = -1  # the process's start time in clock ticks since boot: tells pid reuse
    command: str = ""

    def describe(self) -> str:
        return f"process {self.pid} on host {self.host}, started {self.started}"


def this_process() -> Holder:
    return Holder(
        host=socket.gethostname(), pid=os.getpid(),
        started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        boot_id=_boot_id(), start_ticks=_start_ticks(os.getpid()), command=" ".join(sys.argv)[:500],
    )


def read_holder(workdir: str) -> Holder | None:
    """The job named in `<workdir>/run.lock` (None: no lock file, or a cleared one)."""
    try:
        with open(os.path.join(workdir, LOCK_NAME), encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:
        return None
    return _parse(text)


def live_holder(workdir: str, stale_after_s: float = 300.0) -> Holder | None:
    """The job that holds `workdir` now, judged from its record alone (no lock is taken, so a job
    starting at this moment is never turned away), or None."""
    holder = read_holder(workdir)
    if holder is None:
        return None
    try:
        age_s = time.time() - os.stat(os.path.join(workdir, LOCK_NAME)).st_mtime
    except FileNotFoundError:
        return None
    return holder if holder_is_alive(holder, age_s, stale_after_s) else None


def holder_is_alive(holder: Holder, age_s: float, stale_after_s: float) -> bool:
    """Whether the job of a record in an *unlocked* file still runs (see the module docstring).

    age_s: seconds since the file was last touched (the holder's heartbeat).
    """
    if holder.host == socket.gethostname() and holder.boot_id and holder.boot_id == _boot_id():
        return holder.start_ticks >= 0 and _start_ticks(holder.pid) == holder.start_ticks
    if holder.host == socket.gethostname() and not holder.boot_id:
        return age_s < stale_after_s  # a record without boot id: judge it by its heartbeat
    if holder.host == socket.gethostname():
        return False  # the same host after a reboot: nothing of the old boot runs
    return age_s < stale_after_s


class RunLock:
    """The lock of one run folder, held from `acquire()` to `release()` (or as a context manager).

    Args:
      workdir: the run folder (created if missing; the lock file is its first file).
      heartbeat_s: how often the holder touches the file, so that jobs on other hosts see it alive.
      stale_after_s: a record untouched this long on another host is a dead job's.
    """

    def __init__(self, workdir: str, heartbeat_s: float = 30.0, stale_after_s: float = 300.0):
        self.workdir = os.path.abspath(workdir)
        self.path = os.path.join(self.workdir, LOCK_NAME)
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self._fd: int | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def acquire(self) -> Holder | None:
        """Takes the lock or raises RunFolderLocked naming the live holder.

        Returns the holder of a stale lock that was taken over (None if the folder was free), after
        printing a warning about it.
        """
        os.makedirs(self.workdir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                raise RunFolderLocked(self._refusal(_parse(_read_fd(fd)), "holds its lock"))
            previous = _parse(_read_fd(fd))
            if previous is not None and _same_process(previous, this_process()):
                previous = None  # left by this process, whose earlier lock could not clear it
            if previous is not None:
                age_s = time.time() - os.fstat(fd).st_mtime
                if holder_is_alive(previous, age_s, self.stale_after_s):
                    raise RunFolderLocked(self._refusal(
                        previous, f"is alive (its lock file was refreshed {age_s:.0f} s ago)"))
                print(f"Warning: {self.workdir} was locked by {previous.describe()}, which is no longer "
                      "running (killed or lost); taking over its stale lock.", file=sys.stderr)
            _write_fd(fd, json.dumps(this_process().__dict__, indent=1) + "\n")
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
        self._heartbeat.start()
        return previous

    def release(self) -> None:
        """Clears the record and drops the lock (a clean end leaves no stale lock behind)."""
        if self._fd is None:
            return
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        try:
            _write_fd(self._fd, "")
        except OSError:
            pass  # a full or read-only disk: the kernel's lock still goes, the record reads as stale
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:
                pass  # a transient storage error; the next beat tries again

    def _refusal(self, holder: Holder | None, how: str) -> str:
        who = holder.describe() if holder else "another process (its record is not written yet)"
        return (f"{self.workdir} is in use by another training job: {who}, which {how}. Wait for it to "
                "finish or stop it, or train into another --workdir.")


# --- helpers -----------------------------------------------------------------------------------------


def _same_process(a: Holder, b: Holder) -> bool:
    return (a.host, a.pid, a.boot_id, a.start_ticks) == (b.host, b.pid, b.boot_id, b.start_ticks)


def _parse(text: str) -> Holder | None:
    if not text.strip():
        return None
    try:
        fields = json.loads(text)
        return Holder(**{name: fields[name] for name in Holder.__dataclass_fields__ if name in fields})
    except (ValueError, TypeError, KeyError):
        # Unreadable: written by something else, or cut short by a crash. Such a record names no
        # process that could be alive, except through its heartbeat (host "?" is never this host).
        return Holder(host="?", pid=-1, started="unknown (unreadable lock record)")


def _read_fd(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", errors="replace")


def _write_fd(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    data = text.encode("utf-8")
    while data:
        data = data[os.write(fd, data):]
    os.fsync(fd)


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as file:
            return file.read().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat (start time after boot), or -1 when no such process runs."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as file:
            stat = file.read()
    except OSError:
        return -1
    # The command name (field 2) is in parentheses and may hold spaces: count from its end.
    return int(stat[stat.rindex(")") + 2:].split()[19])
