"""What a long run on a shared machine needs so that nothing half-written is left behind: atomic writes that
recognise a full disk (:class:`DiskFullError`), and a lock per output folder (:func:`claim_folder`) so that two runs
never write into one folder."""
from __future__ import annotations

import atexit
import datetime
import errno
import fcntl
import gzip
import json
import os
import re
import socket
import sys
import tempfile
import time
import zlib
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from nnunet_missingmod.errors import MissingModError


# ------------------------------------------------------------------------------------------------ atomic writes
class DiskFullError(MissingModError):
    """A write failed because its file system is full (or the user's quota is used up)."""


DISK_FULL_FREE_BYTES = 64 << 10
"""After a write, less free space than this counts as a full disk: SimpleITK's NIfTI writer reports a failed write
only on stderr ("wrote only 0 of N bytes") and returns normally, leaving a truncated file."""

_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """Yield a temporary path next to ``path`` for a writer that takes a file name (``savefig``, SimpleITK ...);
    when the block ends without an error the file is renamed over ``path``, otherwise it is removed. Readers never
    see a half-written ``path``, and a failed write leaves an earlier ``path`` as it was. A full disk (an ENOSPC
    error, or a writer that swallowed it) raises :class:`DiskFullError` naming ``path`` and the space needed."""
    ending = ".nii.gz" if path.endswith(".nii.gz") else os.path.splitext(path)[1]
    with atomic_outputs(path[:len(path) - len(ending)], (ending,)) as tmp:
        yield tmp + ending  # the same ending: SimpleITK and savefig choose the format from it


@contextmanager
def atomic_outputs(path_truncated: str, suffixes: Sequence[str]) -> Iterator[str]:
    """:func:`atomic_output` for a writer that makes several files from one name (nnU-Net's export writes
    ``NAME.nii.gz`` and, with probabilities, ``NAME.npz`` and ``NAME.pkl``): yields a temporary name; the writer
    writes ``TEMP + suffix`` for every suffix. They are renamed in the order given (put the file that marks a case
    as done last) when the block succeeds, and all removed when it fails."""
    directory = os.path.dirname(os.path.abspath(path_truncated))
    base = os.path.basename(path_truncated)
    fd, reserved = tempfile.mkstemp(dir=directory, prefix=f".{base}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    temporaries = [(reserved + suffix, path_truncated + suffix) for suffix in suffixes if suffix]
    try:
        with disk_full_reported(path_truncated + suffixes[-1], [t for t, _ in temporaries] + [reserved]):
            yield reserved
            for tmp, final in temporaries:
                _check_complete(tmp, final)
        if not temporaries:  # a name without an ending: the writer wrote the reserved file itself
            temporaries = [(reserved, path_truncated)]
        for tmp, final in temporaries:
            _make_readable(tmp)
            os.replace(tmp, final)
    finally:
        for tmp, _ in temporaries:
            _remove_quietly(tmp)
        _remove_quietly(reserved)


@contextmanager
def disk_full_reported(path: str, written: Sequence[str] = (), needed_bytes: Optional[int] = None) -> Iterator[None]:
    """Inside the block, a failed or silently truncated write (see :data:`DISK_FULL_FREE_BYTES`) on a full disk
    becomes one :class:`DiskFullError` naming ``path``, the free space and what is needed (``needed_bytes``, else
    what had been written into ``written`` or the size of the existing ``path``); other errors pass unchanged."""
    try:
        yield
    except BaseException as error:
        if _is_disk_full_error(error):
            raise DiskFullError(_disk_full_message(path, written, needed_bytes)) from None
        raise
    if free_bytes(os.path.dirname(os.path.abspath(path))) < DISK_FULL_FREE_BYTES:
        raise DiskFullError(_disk_full_message(path, written, needed_bytes))


def _check_complete(written: str, final: str) -> None:
    """A ``.gz`` file must decompress to its end (SimpleITK leaves a truncated one when a write fails and only
    prints "wrote only 0 of N bytes"); a truncated one is a full disk (``OSError(ENOSPC)``) if little space is left,
    else an error naming the file."""
    if not written.endswith(".gz") or not os.path.isfile(written):
        return
    try:
        with gzip.open(written, "rb") as f:
            while f.read(1 << 22):
                pass
    except (OSError, EOFError, zlib.error):
        if free_bytes(os.path.dirname(os.path.abspath(written))) < 16 * DISK_FULL_FREE_BYTES:
            raise OSError(errno.ENOSPC, "No space left on device", final) from None
        raise MissingModError(f"writing {final} failed: the file written is truncated") from None


def free_bytes(directory: str) -> int:
    """Free space of the file system holding ``directory`` for this user (root may use the reserved blocks)."""
    stats = os.statvfs(directory)
    return stats.f_frsize * (stats.f_bfree if os.geteuid() == 0 else stats.f_bavail)


def human_size(n_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n_bytes) < 1024 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    raise AssertionError("unreachable")


def _is_disk_full_error(error: BaseException) -> bool:
    while error is not None:
        if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
            return True
        if "No space left on device" in str(error) or "file write failed" in str(error):
            return True  # torch.save and ITK wrap the OSError into a RuntimeError
        error = error.__cause__ or error.__context__
    return False


def _disk_full_message(path: str, written: Sequence[str], needed_bytes: Optional[int]) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    if needed_bytes is None:
        sizes = [os.path.getsize(p) for p in written if os.path.isfile(p)]
        earlier = os.path.getsize(path) if os.path.isfile(path) else 0
        needed_bytes = max(sum(sizes), earlier)
    needed = f"at least {human_size(needed_bytes)}" if needed_bytes else "more"
    kept = "; the earlier file is kept" if os.path.isfile(path) else f"; {os.path.basename(path)} was not written"
    return (f"disk full while writing {path}: {human_size(free_bytes(directory))} free on {directory}, {needed} "
            f"needed{kept}. Free some space (or write elsewhere) and run again")


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def _make_readable(path: str) -> None:
    """mkstemp creates files as 0600; give the file the permissions of an ordinary new file."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------------- processes
def process_start_time(pid: int) -> Optional[float]:
    """When process ``pid`` started (seconds since the epoch, to about a second), or ``None`` when no such process
    runs (a zombie does not run) or this system does not tell (no ``/proc`` and no ``psutil``)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # the command name in parentheses may hold spaces
        if fields[0] in ("Z", "X"):
            return None
        return _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except FileNotFoundError:
        return None
    except (OSError, IndexError, ValueError):
        pass
    try:
        import psutil
        process = psutil.Process(pid)
        return None if process.status() == psutil.STATUS_ZOMBIE else process.create_time()
    except ImportError:
        return None
    except Exception:  # psutil.NoSuchProcess and the like
        return None


def _boot_time() -> float:
    with open("/proc/stat", encoding="ascii") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    raise ValueError("no btime in /proc/stat")


_SAME_START_SECONDS = 1.5  # start times are read to about a second (the boot time in /proc/stat is in seconds)


def process_is_gone(pid: int, started: Optional[float] = None, active_at: Optional[float] = None) -> bool:
    """Whether process ``pid`` (of this machine) no longer runs: no such process, a zombie, or a later process
    that was given the same pid: one that did not start at ``started`` (its recorded start time), or that started
    after ``active_at`` (a time the original process was known to run, e.g. when it last changed a file). When in
    doubt (no start time to be had), a process with that pid counts as the same one."""
    other_user = False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return True
    except PermissionError:
        other_user = True  # it runs (perhaps hidden from /proc)
    now_started = process_start_time(pid)
    if now_started is None:  # a zombie (or gone meanwhile), where processes can be looked at
        return not other_user and (os.path.exists(f"/proc/{os.getpid()}/stat") or _psutil_knows_processes())
    if started is not None and abs(now_started - started) > _SAME_START_SECONDS:
        return True
    return active_at is not None and now_started > active_at + _SAME_START_SECONDS


def _psutil_knows_processes() -> bool:
    try:
        import psutil  # noqa: F401
        return True
    except ImportError:
        return False


_TEMPORARY = re.compile(r"^\..+\.(?P<pid>\d+)\.[a-z0-9_]+\.tmp(\.[^/]*)?$")
"""A temporary file of :func:`atomic_outputs`: ``.NAME.PID.RANDOM.tmp`` (the reserved name) and
``.NAME.PID.RANDOM.tmp.ENDING`` (what the writer wrote)."""


def remove_stale_temporaries(folder: str) -> List[str]:
    """Remove the temporary files of :func:`atomic_outputs` in ``folder`` whose process is gone (killed with
    SIGKILL while it wrote), and return their paths. A file counts as its process's while a process with its pid
    runs that started before the file last changed (pid and start time); other files are never touched. Only for
    a folder that no live process on another machine writes into (pids are per machine)."""
    removed = []
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return removed
    for name in sorted(names):
        match = _TEMPORARY.match(name)
        if not match or int(match["pid"]) == os.getpid():
            continue
        path = os.path.join(folder, name)
        try:
            changed = os.lstat(path).st_ctime  # a chmod or utime changes it too: never earlier than the writer's
        except FileNotFoundError:
            continue
        if os.path.isfile(path) and process_is_gone(int(match["pid"]), active_at=changed):
            try:
                os.remove(path)
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed


# ------------------------------------------------------------------------------------------------ output folders
def check_writable_folder(folder: str, what: str, create: bool = True) -> None:
    """Prove, before any work, that ``folder`` takes a new file by creating and removing one: a file of that name, a
    read-only file system or a missing permission is one :class:`MissingModError` naming ``what`` and the folder.
    An actual write, not ``os.access``: root passes that check on a folder that a read-only mount still refuses.
    ``create``: make ``folder`` now; otherwise a folder that does not exist yet is left so, and the probe goes into
    its nearest existing parent (where it will be created). The probe is named like a temporary of
    :func:`atomic_outputs`, so one that a killed process left is removed by :func:`remove_stale_temporaries`."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise MissingModError(f"{what} {folder} is a file, not a folder")
    try:
        if create:
            os.makedirs(folder, exist_ok=True)
        probed = os.path.abspath(folder)
        while not os.path.exists(probed):
            probed = os.path.dirname(probed)
        if not os.path.isdir(probed):
            raise MissingModError(f"{what} {folder}: {probed} is a file, not a folder")
        fd, probe = tempfile.mkstemp(dir=probed, prefix=f".write-probe.{os.getpid()}.", suffix=".tmp")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        if _is_disk_full_error(e):
            raise DiskFullError(f"{what} {folder}: the disk is full ({e.strerror}); free some space and run again") \
                from None
        raise MissingModError(f"{what} {folder} is not writable: {e.strerror or e}") from None


# ------------------------------------------------------------------------------------------------- folder locks
FOLDER_LOCK_NAME = ".nnunet-missingmod.lock"


class FolderBusyError(MissingModError):
    """Another live process of ours holds the lock."""


_held_locks: Dict[str, Tuple[int, bool]] = {}  # lock file (real path) -> (descriptor holding its flock, shared)


def claim_folder(folder: str, command: str, part: Optional[Tuple[int, int]] = None) -> None:
    """Make ``folder`` (created if needed) this process's until it exits, so that a second ``predict``,
    ``evaluate``, ``convert`` or ``demo`` writing into it refuses at once, naming the process that has it.

    ``part=(part_id, num_parts)``: the calls of one ``-num_parts`` split share the folder (each holds the folder
    lock shared and its own part exclusively); a whole-folder run and a second call of the same part are refused.
    A lock left by a process that is gone (killed) is taken over, with a message. Claiming again is a no-op.

    The lock is an ``flock`` on a hidden file in the folder, so the kernel releases it when its process dies, for
    any reason; ``flock`` works on local disks and on NFS (Linux emulates it with NFS byte-range locks).
    """
    check_writable_folder(folder, "output folder")
    lock = os.path.join(folder, FOLDER_LOCK_NAME)
    if part is None:
        claim_lock(lock, command, f"{folder}")
        return
    part_id, num_parts = part
    part_lock = os.path.join(folder, f".nnunet-missingmod.part{part_id}of{num_parts}.lock")
    claim_lock(lock, command, folder, shared=True)
    try:
        claim_lock(part_lock, command, f"{folder} (-part_id {part_id} of -num_parts {num_parts})")
    except FolderBusyError:
        release_lock(lock)
        raise


def claim_lock(lock_path: str, command: str, what: str, shared: bool = False) -> None:
    """Hold ``lock_path`` until this process exits (or :func:`release_lock`); raises :class:`FolderBusyError`
    naming the holder when another live process has it. ``what`` names the locked thing in messages.

    A lock still held after its process ended (by a child process that outlived it, e.g. one that a SIGKILL of the
    parent left running on a system without ``PR_SET_PDEATHSIG``) does not block: when the recorded holder, of this
    machine, is gone (pid and start time), its lock file is replaced by a new one."""
    key = os.path.realpath(lock_path)
    if key in _held_locks:
        if _held_locks[key][1] != shared:
            raise ValueError(f"{lock_path} is already held by this process in the other mode")
        return
    _forget_locks_in_forked_children()
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        with _folder_guard(os.path.dirname(os.path.abspath(lock_path))):
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except BlockingIOError:
                stale = _stale_holder(fd)
                if stale and _same_file(lock_path, fd):
                    _remove_quietly(lock_path)  # the orphans keep their (unlinked) file; we lock a new one
                    os.close(fd)
                    print(f"{command}: taking over the lock of {what} left by process {stale.get('pid')} "
                          f"({stale.get('command')} on {stale.get('host')}, started {stale.get('since')}), which "
                          f"is no longer running (a process it started still held the lock)", file=sys.stderr)
                    continue
                os.close(fd)
                raise FolderBusyError(_busy_message(lock_path, what)) from None
            # the previous holder may have removed the file between our open and our flock: lock the new one
            if not _same_file(lock_path, fd):
                os.close(fd)
                continue
            _write_holder(fd, command, what, shared)
        break
    _held_locks[key] = (fd, shared)


def _same_file(path: str, fd: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _write_holder(fd: int, command: str, what: str, shared: bool) -> None:
    """Record this process in a lock it just got (exclusive); a shared lock records nobody, so that a dead
    exclusive holder's record cannot make the shared holders look gone."""
    try:  # best effort: on a full disk the flock alone still works, the messages just cannot name us
        if shared:
            os.ftruncate(fd, 0)
            return
        previous = _read_holder(fd)
        if previous and previous.get("pid") != os.getpid():
            print(f"{command}: taking over the lock of {what} left by process {previous.get('pid')} "
                  f"({previous.get('command')} on {previous.get('host')}, started {previous.get('since')}), which "
                  f"is no longer running", file=sys.stderr)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                  "since": datetime.datetime.now().isoformat(timespec="seconds"),
                  "started": process_start_time(os.getpid())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
    except OSError:
        pass


def _stale_holder(fd: int) -> Optional[dict]:
    """The record of a lock that another process holds, when the process recorded (on this machine) is gone."""
    holder = _read_holder(fd)
    pid = holder.get("pid")
    if not isinstance(pid, int) or holder.get("host") != socket.gethostname() or pid == os.getpid():
        return None
    started = holder.get("started")
    return holder if process_is_gone(pid, started if isinstance(started, (int, float)) else None) else None


@contextmanager
def _folder_guard(folder: str) -> Iterator[None]:
    """A short exclusive ``flock`` on the folder itself around taking a lock and recording its holder, so that a
    process replacing a stale lock file never reads a record that its new holder has not yet written. Where a
    folder cannot be locked (some NFS mounts), nothing is guarded."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        break  # a holder stopped (SIGSTOP) in the guard: go on unguarded
                    time.sleep(0.01)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the guard


_fork_hook_registered = False


def _forget_locks_in_forked_children() -> None:
    """Forked children (multiprocessing's ``fork`` processes, e.g. nnU-Net's ``Manager``) share the parent's lock
    descriptors, so a child that outlived a killed parent would keep its folder locked: each child closes its
    copies at once (the parent's lock is not released by that) and holds no lock of its own."""
    global _fork_hook_registered
    if not _fork_hook_registered:
        os.register_at_fork(after_in_child=_close_inherited_locks)
        _fork_hook_registered = True


def _close_inherited_locks() -> None:
    for fd, _ in _held_locks.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _held_locks.clear()


def release_lock(lock_path: str) -> None:
    """Give up a lock of :func:`claim_lock` (an exclusive one's file is removed: only a killed process leaves one)."""
    fd, shared = _held_locks.pop(os.path.realpath(lock_path), (None, None))
    if fd is None:
        return
    if not shared:  # the only holder
        _remove_quietly(lock_path)
    os.close(fd)


def release_folder(folder: str) -> None:
    for key in [k for k in _held_locks if os.path.dirname(k) == os.path.realpath(folder)]:
        release_lock(key)


def holds_folder_alone(folder: str) -> bool:
    """Whether this process holds ``folder``'s lock exclusively (claimed without ``part``): no other live process
    of ours writes there."""
    held = _held_locks.get(os.path.realpath(os.path.join(folder, FOLDER_LOCK_NAME)))
    return held is not None and not held[1]


def lock_is_held(lock_path: str) -> bool:
    """Whether a live process (this one included) holds ``lock_path``."""
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except ValueError:
        return {}


def _busy_message(lock_path: str, what: str) -> str:
    holders = []
    folder = os.path.dirname(lock_path)
    candidates = [lock_path] + sorted(os.path.join(folder, n) for n in os.listdir(folder)
                                      if n.startswith(".nnunet-missingmod.part") and n.endswith(".lock"))
    for candidate in candidates:
        if lock_is_held(candidate):
            with open(candidate, encoding="utf-8") as f:
                holder = _read_holder(f.fileno())
            if holder:
                holders.append(f"process {holder.get('pid')} ({holder.get('command')} on {holder.get('host')}, "
                               f"started {holder.get('since')})")
    who = "; ".join(dict.fromkeys(holders)) or "another process"
    return (f"{what} is being written by {who}; wait until it ends, or choose another folder. (A lock whose "
            f"process is gone is taken over by itself.)")


@atexit.register
def release_all_locks() -> None:
    """What this process's exit does to its locks (registered with atexit); also for a command run in-process."""
    for key in list(_held_locks):
        release_lock(key)
