"""Data-parallel training under a real MPI launcher: ``mpiexec -n N`` runs of
``distributed_worker.py`` and of the ``scratchnet`` command.

Every launch has a timeout, after which its whole process group is killed and
the test fails: a rank that hangs in a collective fails the test instead of
hanging the suite. Skipped, with the reason, where mpi4py or mpiexec is missing
(``pip install -e ".[mpi]"`` installs both).
"""

import importlib.util
import os
import shutil
import signal
import subprocess
import sys

import numpy
import pytest

import scratchnet as sn

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKER = os.path.join(HERE, "distributed_worker.py")
sys.path.insert(0, HERE)
import distributed_worker as worker  # noqa: E402

TIMEOUT = 120      # seconds for one launch: far above a normal run, far below a hang


def _mpiexec():
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return beside if os.access(beside, os.X_OK) else shutil.which("mpiexec")


def _why_no_mpi():
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed: pip install -e '.[mpi]'"
    if _mpiexec() is None:
        return "no mpiexec beside python or on PATH: pip install mpich"
    return None


if _why_no_mpi() is not None and os.environ.get("SCRATCHNET_REQUIRE_MPI"):
    raise RuntimeError(f"SCRATCHNET_REQUIRE_MPI is set (CI) but MPI is unavailable: "
                       f"{_why_no_mpi()}")
pytestmark = pytest.mark.skipif(_why_no_mpi() is not None, reason=f"MPI unavailable: "
                                f"{_why_no_mpi()}")


def launch(n, argv, cwd, timeout=TIMEOUT):
    """``mpiexec -n n argv...``: (returncode, stdout, stderr); fails the test when
    it does not end within ``timeout`` seconds."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "OMPI_", "PMIX_", "MV2_", "MPI_LOCAL"))}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("SCRATCHNET_BACKEND", "numpy")
    cmd = [_mpiexec(), "-n", str(n), *argv]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd[1:])} did not end within {timeout} s (a rank hangs):\n"
                    f"{out}\n{err}")
    return proc.returncode, out, err


def run_worker(n, case, out, *args, expect_ok=True):
    code, stdout, stderr = launch(n, [sys.executable, WORKER, case, str(out), *map(str, args)],
                                  cwd=out)
    if expect_ok:
        assert code == 0, f"{case} on {n} ranks failed ({code}):\n{stdout}\n{stderr}"
    return code, stdout, stderr


def load(out, case, rank):
    with numpy.load(os.path.join(out, f"{case}-rank{rank}.npz")) as f:
        return {k: f[k] for k in f.files}


# -- N ranks at batch B == one process at batch N*B ----------------------------------

@pytest.fixture(scope="module", params=[2, 3], ids=["2-ranks", "3-ranks"])
def equivalence_run(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"equivalence{request.param}")
    run_worker(request.param, "equivalence", out)
    return request.param, out


@pytest.mark.parametrize("kind, opt", [("mlp", "momentum"), ("mlp", "adam"),
                                       ("cnn", "momentum")])
def test_ranks_match_one_process_at_the_global_batch(equivalence_run, kind, opt):
    """float64, 50 rows (the last global batch is short; with 3 ranks one rank
    has no row of it), 3 epochs with shuffling: the parameters and the reported
    loss and accuracy of N ranks at batch 8 equal one process at batch 8N."""
    n, out = equivalence_run
    X, y = worker.problem(kind)
    ref = worker.build(kind)
    hist = ref.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=worker.optimizer(opt),
                   epochs=worker.EPOCHS, batch_size=n * worker.PER_RANK_BATCH)
    ranks = [load(out, f"{kind}-{opt}", r) for r in range(n)]
    for r, got in enumerate(ranks):
        numpy.testing.assert_allclose(got["params"], ref.flat_parameters(), rtol=0, atol=1e-10,
                                      err_msg=f"rank {r}")
        numpy.testing.assert_allclose(got["loss"], hist.history["loss"], rtol=1e-12)
        numpy.testing.assert_array_equal(got["accuracy"], hist.history["accuracy"])
        numpy.testing.assert_array_equal(got["params"], ranks[0]["params"])   # replicas


# -- per-rank state --------------------------------------------------------------

@pytest.fixture(scope="module")
def state_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("state")
    run_worker(2, "state", out)
    return [load(out, "state-average", r) for r in range(2)], \
        [load(out, "state-local", r) for r in range(2)]


def test_dropout_streams_differ_per_rank_and_replicas_stay_identical(state_run):
    for runs in state_run:
        assert not numpy.array_equal(runs[0]["mask0"], runs[1]["mask0"])
        assert not numpy.array_equal(runs[0]["mask0"], runs[0]["mask1"])
        numpy.testing.assert_array_equal(runs[0]["params"], runs[1]["params"])
        numpy.testing.assert_array_equal(runs[0]["loss"], runs[1]["loss"])   # global figures


def test_batchnorm_statistics_are_averaged_or_kept_per_rank(state_run):
    average, local = state_run
    for key in ("running_mean", "running_var"):
        numpy.testing.assert_array_equal(average[0][key], average[1][key])
        assert not numpy.array_equal(local[0][key], local[1][key])


def test_each_rank_caps_its_threads_at_cores_per_local_rank(state_run):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert int(state_run[0][0]["threads"]) == max(1, cores // 2)


# -- faults: every rank stops, non-zero, naming the rank and the cause ----------------

@pytest.mark.parametrize("case, rank, cause", [
    ("fault-raise", 1, "RuntimeError: injected fault at step 3 of epoch 2"),
    ("fault-diverge", 1, "TrainingDivergedError: training diverged: the loss became inf at "
                         "step 1 of epoch 1"),
    ("fault-nan", 1, "ValueError: X contains 1 NaN or infinite value(s)"),
])
def test_a_failing_rank_stops_every_rank(tmp_path, case, rank, cause):
    code, out, err = run_worker(2, case, tmp_path, expect_ok=False)
    assert code != 0
    assert f"scratchnet: rank {rank} of 2 failed: {cause}" in err, err


def test_a_rank_that_dies_stops_every_rank(tmp_path):
    code, out, err = run_worker(2, "fault-exit", tmp_path, expect_ok=False)
    assert code != 0


def test_mismatched_models_are_refused_at_start_up(tmp_path):
    code, out, err = run_worker(2, "fault-mismatch", tmp_path, expect_ok=False)
    assert code != 0
    assert "ReplicaMismatchError: the ranks differ at start-up: rank 0's model has 83 " \
           "parameters, rank 1's 163 (parameter 0.W has shape (6, 8) on rank 0, (6, 16) on " \
           "rank 1)" in err, err


# -- checkpoints ----------------------------------------------------------------------

def _checkpoint_params(path):
    model, done = sn.training.load_checkpoint(path)
    return model.flat_parameters(), done


def test_checkpoint_survives_a_crash_and_resume_continues_the_trajectory(tmp_path):
    """Adam, a cosine schedule and dropout, 4 epochs on 2 ranks: uninterrupted;
    then a run whose rank 1 fails in epoch 3 (its checkpoint after epoch 2 is
    intact and equal to the uninterrupted run's); then a resumed run from it,
    which ends where the uninterrupted one did, to 1e-10 in float64."""
    run_worker(2, "checkpoint", tmp_path, 4, -1, "full-{epoch}.npz", "")
    full = load(tmp_path, "checkpoint", 0)["params"]
    os.remove(tmp_path / "checkpoint-rank0.npz")

    code, out, err = run_worker(2, "checkpoint", tmp_path, 4, 2, "ck.npz", "",
                                expect_ok=False)
    assert code != 0 and "rank 1 of 2 failed: RuntimeError: injected fault" in err, err
    assert not (tmp_path / "checkpoint-rank0.npz").exists()
    params, done = _checkpoint_params(tmp_path / "ck.npz")
    assert done == 2
    numpy.testing.assert_array_equal(params, _checkpoint_params(tmp_path / "full-2.npz")[0])
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]

    run_worker(2, "checkpoint", tmp_path, 4, -1, "resumed.npz", "ck.npz")
    for r in range(2):
        numpy.testing.assert_allclose(load(tmp_path, "checkpoint", r)["params"], full,
                                      rtol=0, atol=1e-10)


# -- the command line ---------------------------------------------------------------

def _scratchnet():
    beside = os.path.join(os.path.dirname(sys.executable), "scratchnet")
    return [beside] if os.access(beside, os.X_OK) else [sys.executable, "-m", "scratchnet.cli"]


def test_cli_trains_under_mpiexec_prints_once_and_resumes(tmp_path):
    common = ["train", "--epochs", "3", "--dtype", "float64", "--backend", "numpy",
              "--hidden", "16", "--batch-size", "16"]
    code, out, err = launch(2, [*_scratchnet(), *common, "--checkpoint", "ck-{epoch}.npz",
                                "--save", "full.npz"], cwd=tmp_path)
    assert code == 0, out + err
    assert out.count("test accuracy") == 1 and out.count("model saved") == 1, out
    assert "data-parallel: 2 ranks" in out and "global batch 32" in out, out
    assert err.count("epoch 3/3") == 1, err        # progress: rank 0 only
    assert sorted(f for f in os.listdir(tmp_path) if f.startswith("ck-")) == \
        ["ck-1.npz", "ck-2.npz", "ck-3.npz"]

    code, out, err = launch(2, [*_scratchnet(), *common, "--resume", "ck-1.npz", "--save",
                                "resumed.npz"], cwd=tmp_path)
    assert code == 0, out + err
    assert "resumed from ck-1.npz after 1 epoch" in out, out
    numpy.testing.assert_allclose(sn.load(tmp_path / "resumed.npz").flat_parameters(),
                                  sn.load(tmp_path / "full.npz").flat_parameters(),
                                  rtol=0, atol=1e-10)
