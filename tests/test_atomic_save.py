"""Atomic saves: errors that name the user's path, and no temporary files left behind."""

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import scratchnet as sn
from scratchnet import _atomic
from scratchnet._atomic import atomic_write


def small_model():
    return sn.Sequential([sn.Dense(4, 3), sn.ReLU(), sn.Dense(3, 2)], seed=0)


def temps(folder):
    return sorted(n for n in os.listdir(folder) if n.endswith(".tmp"))


def write_bytes(data):
    return lambda f: f.write(data)


def dead_pid():
    """The id of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- paths checked up front, errors naming the user's path --------------------

def test_missing_folder_names_the_path(tmp_path):
    target = tmp_path / "no" / "such" / "m.npz"
    with pytest.raises(FileNotFoundError) as info:
        small_model().save(target)
    assert str(target) in str(info.value) and "does not exist" in str(info.value)
    assert ".scratchnet-" not in str(info.value)
    assert info.value.errno == errno.ENOENT


def test_empty_path():
    with pytest.raises(ValueError, match="path is empty"):
        small_model().save("")


def test_directory_path(tmp_path):
    with pytest.raises(IsADirectoryError, match="names a folder") as info:
        small_model().save(tmp_path)
    assert str(tmp_path) in str(info.value)
    with pytest.raises(IsADirectoryError, match="names a folder"):
        atomic_write(str(tmp_path / "missing") + os.sep, write_bytes(b"x"))
    assert os.listdir(tmp_path) == []


def test_bytes_path(tmp_path):
    target = os.fsencode(tmp_path / "m.npz")
    model = small_model()
    model.save(target)
    loaded = sn.load(os.fsdecode(target))
    np.testing.assert_array_equal(sn.get_backend().to_host(loaded.layers[0].W),
                                  sn.get_backend().to_host(model.layers[0].W))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        small_model().save(os.fsencode(tmp_path / "no" / "m.npz"))


def test_not_a_path():
    with pytest.raises(TypeError, match="str, bytes or os.PathLike"):
        atomic_write(12, write_bytes(b"x"))


def test_overlong_name(tmp_path):
    target = tmp_path / ("m" * 300 + ".npz")
    with pytest.raises(OSError, match="more than the") as info:
        small_model().save(target)
    assert info.value.errno == errno.ENAMETOOLONG
    assert str(tmp_path) in str(info.value) and ".scratchnet-" not in str(info.value)
    assert os.listdir(tmp_path) == []


def test_parent_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        atomic_write(tmp_path / "file" / "m.npz", write_bytes(b"x"))


def test_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as a user whom file permissions do not stop (root)")
        with pytest.raises(PermissionError, match="no permission") as info:
            small_model().save(folder / "m.npz")
        assert str(folder / "m.npz") in str(info.value)
    finally:
        folder.chmod(0o755)


def test_unwritable_folder_is_refused_before_writing(tmp_path, monkeypatch):
    """The same check where permissions do not stop the user (root): os.access says no."""
    monkeypatch.setattr(_atomic.os, "access", lambda path, mode: False)
    with pytest.raises(PermissionError, match="no permission to write in the folder") as info:
        atomic_write(tmp_path / "m.bin", write_bytes(b"x"))
    assert str(tmp_path / "m.bin") in str(info.value)
    assert os.listdir(tmp_path) == []


def test_failure_after_the_checks_names_the_path_not_the_temp(tmp_path, monkeypatch):
    """A failing rename (e.g. a read-only file system seen only when writing)."""
    target = tmp_path / "m.npz"

    def fail(src, dst):
        raise OSError(errno.EROFS, "Read-only file system", src)

    monkeypatch.setattr(_atomic.os, "replace", fail)
    with pytest.raises(OSError) as info:
        atomic_write(target, write_bytes(b"data"))
    monkeypatch.undo()
    assert info.value.errno == errno.EROFS
    assert str(target) in str(info.value) and "Read-only file system" in str(info.value)
    assert ".scratchnet-" not in str(info.value)
    assert isinstance(info.value.__cause__, OSError)       # the original, chained
    assert os.listdir(tmp_path) == []


# --- failures leave the previous file and no temporary file -----------------------

def test_raising_write_fn_keeps_previous_file(tmp_path):
    target = tmp_path / "m.bin"
    atomic_write(target, write_bytes(b"first"))

    def half_then_fail(f):
        f.write(b"half of the second")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"first"
    assert os.listdir(tmp_path) == ["m.bin"]


def test_written_file_is_complete_and_ordinary(tmp_path):
    target = tmp_path / "m.bin"
    assert atomic_write(target, write_bytes(b"abc")) == str(target)
    assert target.read_bytes() == b"abc"
    (tmp_path / "plain").write_bytes(b"")
    assert (target.stat().st_mode & 0o777) == ((tmp_path / "plain").stat().st_mode & 0o777)


# --- temporary files left by killed saves ---------------------------------------

def test_stale_temp_of_a_dead_process_is_removed(tmp_path):
    stale = tmp_path / _atomic.temp_name(dead_pid())
    stale.write_bytes(b"left by a killed save")
    atomic_write(tmp_path / "m.bin", write_bytes(b"x"))
    assert os.listdir(tmp_path) == ["m.bin"]


def test_temp_of_a_live_process_is_kept(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = tmp_path / _atomic.temp_name(sleeper.pid)
        busy.write_bytes(b"a save in progress")
        atomic_write(tmp_path / "m.bin", write_bytes(b"x"))
        assert busy.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_other_files_are_never_touched(tmp_path):
    pid = dead_pid()
    keep = [".scratchnet-abc123.tmp",                               # no process id in the name
            f".scratchnet-{pid}-00000000-ab.tmp",                   # another host's
            "notes.tmp", f"scratchnet-{pid}-{_atomic.host_tag()}-ab.tmp"]
    for name in keep:
        (tmp_path / name).write_bytes(b"")
    own = tmp_path / _atomic.temp_name()                             # this process: maybe busy
    own.write_bytes(b"")
    atomic_write(tmp_path / "m.bin", write_bytes(b"x"))
    assert sorted(os.listdir(tmp_path)) == sorted(keep + [own.name, "m.bin"])


SAVER = textwrap.dedent("""
    import sys
    import scratchnet as sn
    path = sys.argv[1]
    model = sn.Sequential([sn.Dense(1024, 1024), sn.ReLU(), sn.Dense(1024, 1024), sn.ReLU(),
                           sn.Dense(1024, 1024)], seed=0, dtype="float64")
    while True:
        model.save(path)
""")


# the child imports this scratchnet, wherever the test runs from
CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    p for p in (os.path.dirname(os.path.dirname(sn.__file__)), os.environ.get("PYTHONPATH"))
    if p)}


@pytest.mark.skipif(os.name == "nt", reason="kill -9 is POSIX")
def test_save_killed_mid_write_leaves_previous_file_and_next_save_cleans_up(tmp_path):
    target = tmp_path / "big.npz"
    leftover = []
    for _attempt in range(5):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(target)], env=CHILD_ENV)
        try:
            deadline = time.monotonic() + 60
            while not leftover and time.monotonic() < deadline and proc.poll() is None:
                # wait until one save has completed and the next one is writing
                if target.exists() and temps(tmp_path):
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    leftover = temps(tmp_path)
                time.sleep(0.005)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        if leftover:
            break
    assert proc.returncode == -signal.SIGKILL
    assert leftover, "the child was never caught in the middle of a save"
    assert leftover[0].startswith(f".scratchnet-{proc.pid}-")
    loaded = sn.load(target)                   # the previous, complete file
    assert loaded.layers[0].W.shape == (1024, 1024)
    small_model().save(tmp_path / "other.npz")
    assert temps(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == ["big.npz", "other.npz"]
