"""Atomic file writes, and checks of where a file or folder is about to be written.

``atomic_write(path, write_fn)`` writes a file completely or not at all: the
bytes go into a temporary file in the target's folder, which is flushed to
disk and then renamed over ``path`` in one step, so a failure (a full disk,
an exception, a killed process) leaves the previous file intact.

A process killed in the middle of a save cannot remove its temporary file.
Each one is named ``.scratchnet-<pid>-<host>-<random>.tmp``: the writer's
process id and a short tag of its host name. Before writing, ``atomic_write``
removes the temporary files of the same host whose process no longer exists;
a file whose writer is still running (or may be: another user's process,
another host) is never touched.

Every error names the path the caller gave, never the temporary file.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import socket

PREFIX = ".scratchnet-"
SUFFIX = ".tmp"
_TEMP = re.compile(r"^\.scratchnet-(\d+)-([0-9a-f]{8})-[0-9a-f]+\.tmp$")

__all__ = ["atomic_write", "check_file_target", "check_folder_target", "remove_stale_temps"]


def host_tag():
    """Eight hex digits of the host name: process ids mean something only on
    their own host (a folder may be shared over the network)."""
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def temp_name(pid=None):
    """A fresh temporary file name for the process ``pid`` (default: this one)."""
    pid = os.getpid() if pid is None else pid
    return f"{PREFIX}{pid}-{host_tag()}-{secrets.token_hex(6)}{SUFFIX}"


def as_str_path(path):
    """``path`` (str, bytes or os.PathLike) as a str; TypeError for anything else."""
    try:
        return os.fsdecode(os.fspath(path))
    except TypeError:
        raise TypeError(f"a path must be a str, bytes or os.PathLike, got "
                        f"{type(path).__name__}") from None


def _error(cls, code, message):
    """An OSError subclass whose text is ``message`` alone, with ``errno`` set."""
    err = cls(message)
    err.errno = code
    return err


def _name_max(folder):
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):    # no pathconf (Windows), or unknown
        return 255


def _check_name(path, name, folder):
    if len(os.fsencode(name)) > _name_max(folder):
        raise _error(OSError, errno.ENAMETOOLONG,
                     f"cannot write {path!r}: the name {name[:40]!r}... is "
                     f"{len(os.fsencode(name))} bytes long, more than the "
                     f"{_name_max(folder)} this file system allows")


def _check_writable(path, folder):
    if not os.access(folder, os.W_OK | os.X_OK):
        raise _error(PermissionError, errno.EACCES,
                     f"cannot write {path!r}: no permission to write in the folder {folder!r}")


def check_file_target(path):
    """Check that a file can be written at ``path`` (it need not exist yet):
    not empty, not a folder, in an existing, writable folder, with a name
    the file system allows. Returns the path as a str; raises ValueError or
    an OSError subclass whose message names ``path``."""
    path = as_str_path(path)
    if path == "":
        raise ValueError("cannot write '': the path is empty")
    if "\0" in path:
        raise ValueError(f"cannot write {path!r}: the path contains a NUL character")
    if os.path.isdir(path) or path.endswith(("/", os.sep)):
        raise _error(IsADirectoryError, errno.EISDIR,
                     f"cannot write {path!r}: it names a folder; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(folder):
        raise _error(FileNotFoundError, errno.ENOENT,
                     f"cannot write {path!r}: the folder {folder!r} does not exist")
    if not os.path.isdir(folder):
        raise _error(NotADirectoryError, errno.ENOTDIR,
                     f"cannot write {path!r}: {folder!r} is a file, not a folder")
    _check_name(path, os.path.basename(path), folder)
    _check_writable(path, folder)
    return path


def check_folder_target(path):
    """Check that files can be written into the folder ``path``, created
    (with its parents) if missing: not empty, not an existing file, and the
    nearest existing folder above it writable. Returns the path as a str;
    raises ValueError or an OSError subclass whose message names ``path``."""
    path = as_str_path(path)
    if path == "":
        raise ValueError("cannot write into '': the folder path is empty")
    if "\0" in path:
        raise ValueError(f"cannot write into {path!r}: the path contains a NUL character")
    if os.path.exists(path) and not os.path.isdir(path):
        raise _error(NotADirectoryError, errno.ENOTDIR,
                     f"cannot write into {path!r}: it is an existing file, not a folder")
    existing, missing = os.path.abspath(path), []
    while not os.path.exists(existing):
        existing, name = os.path.split(existing)
        missing.append(name)
    if not os.path.isdir(existing):
        raise _error(NotADirectoryError, errno.ENOTDIR,
                     f"cannot write into {path!r}: {existing!r} is a file, not a folder")
    for name in missing:
        _check_name(path, name, existing)
    _check_writable(path, existing)
    return path


def _alive(pid):
    """False only when no process ``pid`` exists (signal 0 checks, sends nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:            # PermissionError: it exists, another user's
        return True
    return True


def remove_stale_temps(folder):
    """Remove the temporary files that killed saves left in ``folder``: those
    of this host whose process is gone. Returns the names removed."""
    if os.name == "nt":        # os.kill(pid, 0) would terminate the process there
        return []
    mine, removed = host_tag(), []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        m = _TEMP.match(entry.name)
        if m is None or m.group(2) != mine:
            continue
        pid = int(m.group(1))
        # pid 0 would make os.kill address the whole process group; our own
        # pid may be another thread's save in progress.
        if pid <= 0 or pid == os.getpid() or _alive(pid):
            continue
        try:
            os.unlink(entry.path)
        except OSError:        # removed meanwhile by another save, or not ours to remove
            continue
        removed.append(entry.name)
    return removed


def _umask():
    # The only portable way to read the umask is to set it (and put it back).
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _open_temp(folder):
    for _ in range(100):
        tmp = os.path.join(folder, temp_name())
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
            return os.open(tmp, flags, 0o600), tmp
        except FileExistsError:
            continue
    raise _error(FileExistsError, errno.EEXIST, f"no free temporary file name in {folder!r}")


def _sync_folder(folder):
    """Make the rename itself durable; not every platform can open a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, write_fn):
    """Write a file at ``path`` (str, bytes or os.PathLike) by calling
    ``write_fn(f)`` with a binary file object; the file appears complete or
    not at all. It gets the permissions of a newly created file (0666 less
    the umask). Raises ValueError or OSError naming ``path`` (the original
    error chained as the cause); an exception raised by ``write_fn`` itself
    that is not an OSError passes through unchanged. Returns the path as a str."""
    path = check_file_target(path)
    folder = os.path.dirname(os.path.abspath(path))
    remove_stale_temps(folder)
    tmp = None
    try:
        fd, tmp = _open_temp(folder)
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())    # a saved model is an ordinary file, not 0600
        os.replace(tmp, path)
        tmp = None
        _sync_folder(folder)
    except OSError as err:
        # The message names the caller's path: the temporary name means nothing to them.
        message = f"cannot write {path!r}: {err.strerror or err}"
        try:
            wrapped = _error(type(err), err.errno, message)
        except TypeError:           # an OSError subclass with another signature
            wrapped = _error(OSError, err.errno, message)
        raise wrapped from err
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return path
