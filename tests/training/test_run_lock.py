"""The run-folder lock: a live holder refuses others, a dead one's lock is taken over.

The end-to-end checks (a second `train.py` on a folder that a running one holds; the lock that
`kill -9` leaves behind) are in test_faults.py; these cover each way of judging a holder.
"""

import dataclasses
import json
import os
import subprocess
import sys
import time

import pytest

from mmjax.training.run_lock import LOCK_NAME, Holder, RunFolderLocked, RunLock, live_holder, read_holder, this_process


def write_record(workdir, holder: Holder, age_s: float = 0.0):
    path = os.path.join(workdir, LOCK_NAME)
    with open(path, "w") as file:
        json.dump(dataclasses.asdict(holder), file)
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))


def dead_process() -> Holder:
    """The record a process that has ended would have left: its pid no longer runs."""
    proc = subprocess.Popen([sys.executable, "-c", "import os; print(os.getpid())"], stdout=subprocess.PIPE, text=True)
    pid = int(proc.communicate()[0])
    return dataclasses.replace(this_process(), pid=pid, start_ticks=12345)


def test_a_live_holder_refuses_a_second_lock_naming_itself(tmp_path):
    with RunLock(str(tmp_path)) as first:
        holder = read_holder(str(tmp_path))
        assert holder.pid == os.getpid() and holder.host == this_process().host
        assert live_holder(str(tmp_path)) == holder  # what eval.py reports, without locking
        # The kernel's lock: a second open of the file (as another job's would be) is refused.
        with pytest.raises(RunFolderLocked, match=rf"is in use by another training job: process {os.getpid()} on host \S+, started .*holds its lock"):
            RunLock(str(tmp_path)).acquire()
        assert first._fd is not None
    # A clean release leaves no record, and the next job takes the lock without a warning.
    assert read_holder(str(tmp_path)) is None and live_holder(str(tmp_path)) is None
    lock = RunLock(str(tmp_path))
    assert lock.acquire() is None
    lock.release()


def test_a_dead_holders_lock_is_taken_over_with_a_warning(tmp_path, capsys):
    dead = dead_process()
    write_record(tmp_path, dead)  # what kill -9 leaves: a record in a file nobody has locked
    lock = RunLock(str(tmp_path))
    assert lock.acquire() == dead
    assert f"was locked by process {dead.pid} on host {dead.host}" in capsys.readouterr().err
    assert read_holder(str(tmp_path)).pid == os.getpid()
    lock.release()


def test_a_record_from_before_a_reboot_is_stale(tmp_path):
    rebooted = dataclasses.replace(this_process(), pid=os.getppid(), boot_id="another-boot")
    write_record(tmp_path, rebooted)
    lock = RunLock(str(tmp_path))
    assert lock.acquire() == rebooted
    lock.release()


def test_a_holder_on_another_host_counts_as_alive_while_its_heartbeat_is_fresh(tmp_path):
    """Filesystems that do not share locks between hosts: the record's heartbeat decides."""
    elsewhere = Holder(host="tpu-vm-7", pid=4121, started="2026-12-01T10:00:00+00:00")
    write_record(tmp_path, elsewhere, age_s=20)
    with pytest.raises(RunFolderLocked, match=r"process 4121 on host tpu-vm-7, .* refreshed 2\d s ago"):
        RunLock(str(tmp_path), stale_after_s=300).acquire()
    write_record(tmp_path, elsewhere, age_s=400)  # no heartbeat for longer than stale_after_s
    lock = RunLock(str(tmp_path), stale_after_s=300)
    assert lock.acquire() == elsewhere
    lock.release()


def test_the_holder_keeps_its_lock_file_fresh(tmp_path):
    lock = RunLock(str(tmp_path), heartbeat_s=0.05)
    lock.acquire()
    path = os.path.join(tmp_path, LOCK_NAME)
    stamp = time.time() - 100
    os.utime(path, (stamp, stamp))
    time.sleep(0.3)
    assert time.time() - os.stat(path).st_mtime < 10
    lock.release()


def test_an_unreadable_record_is_judged_by_its_age(tmp_path):
    path = os.path.join(tmp_path, LOCK_NAME)
    with open(path, "w") as file:
        file.write('{"host": "a", "pi')  # cut short
    with pytest.raises(RunFolderLocked, match="unreadable lock record"):
        RunLock(str(tmp_path)).acquire()
    old = time.time() - 1000
    os.utime(path, (old, old))
    lock = RunLock(str(tmp_path))
    assert lock.acquire().pid == -1
    lock.release()
