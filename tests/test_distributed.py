"""Data-parallel parts that need no MPI launcher: launcher detection, the
sharded batch source, the weighted allreduce, one-process runs, the NCCL
communicator's set-up (with a stand-in for cupy.cuda.nccl: no GPU here),
checkpoints and resuming. ``test_distributed_mpi.py`` runs the same code
under ``mpiexec``."""

import os
import subprocess
import sys
import types

import numpy
import pytest

import scratchnet as sn
from scratchnet import distributed as D
from scratchnet.backends import get_ops
from scratchnet.training import BatchSource, MatrixStep

from test_cli import run as run_cli


def small_problem(n=50, features=6, classes=3, seed=0):
    rng = numpy.random.default_rng(seed)
    return rng.normal(size=(n, features)), rng.integers(0, classes, n)


def small_model(extra=(), seed=3, dtype="float64"):
    return sn.Sequential([sn.Dense(6, 8, activation="tanh"), *extra, sn.Dense(8, 3)],
                         seed=seed, dtype=dtype, backend="numpy")


# -- launcher and world ----------------------------------------------------------------

def test_import_scratchnet_imports_no_mpi4py():
    code = "import sys, scratchnet; scratchnet.distributed.init(); " \
           "print(sorted(m for m in ('mpi4py', 'numba', 'cupy') if m in sys.modules))"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.stdout.strip() == "[]", out.stderr


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"PMI_SIZE": "4", "PMI_RANK": "1"}, ("mpiexec (MPICH / Intel MPI)", 4)),
    ({"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "0"}, ("mpirun (Open MPI)", 2)),
    ({"MV2_COMM_WORLD_SIZE": "3"}, ("mpirun (MVAPICH)", 3)),
    ({"PMIX_RANK": "0"}, ("a PMIx launcher", None)),
])
def test_launcher_is_detected_from_the_environment(env, expected):
    assert D.detect_launcher(env) == expected


def test_default_threads_share_the_cores_between_local_ranks():
    assert D.default_threads(2, cores=2) == 1
    assert D.default_threads(1, cores=2) == 2
    assert D.default_threads(3, cores=8) == 2
    assert D.default_threads(4, cores=2) == 1      # at least one


def test_without_a_launcher_init_is_one_process():
    world = D.init()
    assert (world.rank, world.world_size, world.launched) == (0, 1, False)
    assert tuple(world) == (0, 1)
    assert world.allgather("x") == ["x"] and world.bcast(5) == 5
    assert isinstance(world.communicator("numpy"), D.LocalCommunicator)


def _run_env(code, env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_"))}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=env)


def test_a_launcher_without_mpi4py_is_a_clear_error():
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "import scratchnet as sn\n"
            "try:\n    sn.distributed.init()\n"
            "except sn.BackendUnavailableError as err:\n    print(type(err).__name__, err)\n")
    out = _run_env(code, {"PMI_SIZE": "2", "PMI_RANK": "0"})
    assert out.stdout.startswith("DistributedUnavailableError this process was started by "
                                 "mpiexec (MPICH / Intel MPI), but mpi4py is not installed: "
                                 "pip install scratchnet[mpi]"), out.stdout + out.stderr


def test_an_mpiexec_of_another_mpi_is_a_clear_error():
    """The launcher says 2 processes, MPI (a singleton here) says 1: the ranks
    would each train alone; init refuses instead."""
    pytest.importorskip("mpi4py", reason="mpi4py is not installed: pip install -e '.[mpi]'")
    code = ("import scratchnet as sn\n"
            "try:\n    sn.distributed.init()\n"
            "except sn.BackendUnavailableError as err:\n    print(err)\n")
    out = _run_env(code, {"PMI_SIZE": "2", "PMI_RANK": "0"})
    assert "started 2 processes, but MPI reports a world of 1" in out.stdout, \
        out.stdout + out.stderr


# -- the sharded batch source --------------------------------------------------------

@pytest.mark.parametrize("n, batch, world, min_batch", [
    (50, 8, 2, 1), (50, 8, 3, 1), (48, 8, 3, 1), (5, 8, 3, 1), (50, 8, 3, 2), (53, 4, 3, 2),
])
def test_every_rank_takes_its_slice_of_the_same_global_batches(n, batch, world, min_batch):
    ops = sn.get_backend()
    sources = [D.ShardedBatchSource(n, batch, rank=r, world_size=world,
                                    rng=numpy.random.default_rng(7), min_batch=min_batch)
               for r in range(world)]
    single = BatchSource(n, batch * world, rng=numpy.random.default_rng(7))
    steps = [[(numpy.asarray(idx), s.rows) for idx in s.epoch(ops)] for s in sources]
    assert len({len(s) for s in steps}) == 1                 # the same number of steps
    assert all(len(s) == len(src) for s, src in zip(steps, sources))
    glob = [numpy.concatenate([steps[r][b][0] for r in range(world)])
            for b in range(len(steps[0]))]
    numpy.testing.assert_array_equal(numpy.sort(numpy.concatenate(glob)), numpy.arange(n))
    for b, rows in enumerate(glob):
        assert all(steps[r][b][1] == (len(steps[r][b][0]), len(rows)) for r in range(world))
        if min_batch > 1:
            assert min(len(steps[r][b][0]) for r in range(world)) >= min_batch
    if min_batch == 1:       # exactly the single-process batches at batch * world
        expected = single.epoch(ops)
        assert len(glob) == len(expected)
        for got, want in zip(glob, expected):
            numpy.testing.assert_array_equal(got, want)
    for b in range(len(glob) - 1):          # full batches: rank r takes rows [rB, (r+1)B)
        if len(glob[b]) == batch * world:
            assert all(len(steps[r][b][0]) == batch for r in range(world))


def test_one_rank_is_the_plain_batch_source():
    ops = sn.get_backend()
    for min_batch in (1, 2):
        a = D.ShardedBatchSource(49, 16, rng=numpy.random.default_rng(1), min_batch=min_batch)
        b = BatchSource(49, 16, rng=numpy.random.default_rng(1), min_batch=min_batch)
        assert a.bounds() == b.bounds()
        for x, y in zip(a.epoch(ops), b.epoch(ops)):
            numpy.testing.assert_array_equal(x, y)


# -- the weighted allreduce -----------------------------------------------------------

class RecordingCommunicator:
    """Stands in for the allreduce: keeps each rank's contribution."""

    name = "recording"

    def __init__(self):
        self.sent = []

    def allreduce_sum_(self, buf):
        self.sent.append(buf.copy())
        return buf


@pytest.mark.parametrize("world", [2, 3])
def test_the_weighted_sum_of_rank_gradients_is_the_global_batch_gradient(world):
    """Every step of an epoch of 50 rows at 8 per rank, including the short
    last batch (with 3 ranks, one rank has no row of it): the sum of what the
    ranks send equals the gradient of one process on the whole global batch."""
    X, y = small_problem()
    loss = sn.SoftmaxCrossEntropy()
    ops = get_ops("numpy")
    model = small_model()
    sources = [D.ShardedBatchSource(50, 8, r, world, rng=numpy.random.default_rng(5))
               for r in range(world)]
    comm = RecordingCommunicator()
    hooks = [D.AllreduceGradients(comm, s) for s in sources]
    step = D.ShardStep(MatrixStep(model, loss), model)
    epochs = [list(s.epoch(ops)) for s in sources]
    order = numpy.random.default_rng(5).permutation(50)
    for b in range(len(epochs[0])):
        comm.sent.clear()
        for r in range(world):
            sources[r].rows = (len(epochs[r][b]), sum(len(e[b]) for e in epochs))
            idx = epochs[r][b]
            step(X[idx], y[idx])
            hooks[r](model)
        total = sum(comm.sent)
        glob = numpy.concatenate([e[b] for e in epochs])
        numpy.testing.assert_array_equal(glob, order[b * 8 * world:(b + 1) * 8 * world])
        MatrixStep(model, loss)(X[glob], y[glob])
        numpy.testing.assert_allclose(total, model.flat_gradients(), rtol=0, atol=1e-15)


def test_fit_distributed_without_a_launcher_is_the_plain_run():
    """Dropout, BatchNorm, Adam, clipping, a schedule and validation: bit for bit."""
    X, y = small_problem(60)
    results = []
    for distributed in (None, True):
        model = small_model(extra=[sn.BatchNorm(8), sn.Dropout(0.3)])
        hist = model.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=sn.Adam(0.01),
                         epochs=3, batch_size=16, clip_grad_norm=1.0, validation_data=(X, y),
                         lr_schedule=sn.schedules.cosine(0.01, 3), distributed=distributed)
        hist.history.pop("time")
        results.append((model.state_arrays(), hist.history))
    for key in results[0][0]:
        numpy.testing.assert_array_equal(results[0][0][key], results[1][0][key], err_msg=key)
    assert results[0][1] == results[1][1]


def test_distributed_refuses_what_it_cannot_use():
    X, y = small_problem()
    with pytest.raises(TypeError, match="distributed must be True, a World"):
        small_model().fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=sn.SGD(0.1),
                          distributed="yes")
    with pytest.raises(ValueError, match="buffers must be one of"):
        D.DataParallel(D.init(), buffers="sum")


# -- NCCL (CuPy) ---------------------------------------------------------------------

def test_nccl_without_cupy_is_a_clear_error():
    import importlib.util
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy is installed here")
    with pytest.raises(D.DistributedUnavailableError, match="the NCCL communicator needs CuPy"):
        D.NCCLCommunicator(D.init())
    desc, why = D.nccl_status()
    assert desc is None and "CuPy" in why


class FakeWorld:
    def __init__(self, rank, size, box):
        self.rank, self.world_size, self.mpi, self.box = rank, size, object(), box

    def bcast(self, obj, root=0):
        if self.rank == root:
            self.box["uid"] = obj
        return self.box["uid"]


def test_nccl_communicator_broadcasts_rank_0s_unique_id_and_sums_in_place(monkeypatch):
    """With a stand-in for cupy.cuda.nccl (no GPU here): rank 0 creates the
    unique id, every rank builds its communicator from the broadcast id, and
    the allreduce is an in-place NCCL sum over the buffer's device pointer."""
    calls = []

    class Comm:
        def __init__(self, ndev, uid, rank):
            calls.append(("init", ndev, uid, rank))

        def allReduce(self, send, recv, count, dtype, op, stream):
            calls.append(("allReduce", send, recv, count, dtype, op, stream))

        def abort(self):
            calls.append(("abort",))

    nccl = types.SimpleNamespace(available=True, NCCL_FLOAT32=7, NCCL_FLOAT64=8, NCCL_SUM=0,
                                 get_unique_id=lambda: (11, 22, 33), NcclCommunicator=Comm)

    class Array:          # the parts of a cupy.ndarray the communicator reads
        dtype, size, flags = numpy.dtype("float64"), 5, types.SimpleNamespace(c_contiguous=True)
        data = types.SimpleNamespace(ptr=0xBEEF)

    cupy = types.ModuleType("cupy")
    cupy.ndarray = Array
    cupy.cuda = types.SimpleNamespace(nccl=nccl, get_current_stream=lambda:
                                      types.SimpleNamespace(ptr=0x5))
    monkeypatch.setattr(D, "_import_nccl", lambda: nccl)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    box = {}
    comms = [D.NCCLCommunicator(FakeWorld(r, 2, box)) for r in range(2)]
    assert calls == [("init", 2, (11, 22, 33), 0), ("init", 2, (11, 22, 33), 1)]
    calls.clear()
    comms[1].allreduce_sum_(Array())
    assert calls == [("allReduce", 0xBEEF, 0xBEEF, 5, 8, 0, 0x5)]
    with pytest.raises(TypeError, match="NCCL allreduce needs"):
        comms[1].allreduce_sum_(numpy.zeros(3))


def test_mpi_communicator_refuses_device_arrays():
    comm = D.MPICommunicator.__new__(D.MPICommunicator)
    with pytest.raises(TypeError, match="NCCL communicator"):
        comm.allreduce_sum_(numpy.zeros((3, 2))[:, 0])


# -- checkpoints and resuming (one process) --------------------------------------------

def test_resuming_from_a_checkpoint_continues_the_same_trajectory(tmp_path):
    """Adam, dropout, shuffling and a cosine schedule in float64: 2 epochs,
    a checkpoint, 3 more from it == 5 uninterrupted epochs, to 1e-10."""
    X, y = small_problem(70)
    loss = sn.SoftmaxCrossEntropy()

    def fit(model, opt, epochs, initial=0, callbacks=()):
        return model.fit(X, y, loss=loss, optimizer=opt, epochs=epochs, batch_size=16,
                         initial_epoch=initial, lr_schedule=sn.schedules.cosine(0.02, 5),
                         callbacks=list(callbacks))
    full = small_model(extra=[sn.Dropout(0.3)])
    ck = sn.training.Checkpoint(tmp_path / "ck-{epoch}.npz")
    hist = fit(full, sn.Adam(0.02), 5, callbacks=[ck])
    assert ck.written == [str(tmp_path / f"ck-{e}.npz") for e in range(1, 6)]

    model, done = sn.training.load_checkpoint(tmp_path / "ck-2.npz")
    assert done == 2
    rest = fit(model, model.optimizer, 5, initial=2)
    assert rest.epoch == [2, 3, 4]
    numpy.testing.assert_allclose(model.flat_parameters(), full.flat_parameters(), rtol=0,
                                  atol=1e-10)
    numpy.testing.assert_allclose(rest.history["loss"], hist.history["loss"][2:], rtol=1e-12)


def test_checkpoint_files_are_checked(tmp_path):
    X, y = small_problem()
    model = small_model()
    model.save(tmp_path / "plain.npz")
    assert sn.training.load_checkpoint(tmp_path / "plain.npz")[1] == 0
    from scratchnet.io import read_file, write_file
    config, arrays = read_file(tmp_path / "plain.npz")
    config["training"] = {"epochs_done": "two"}
    write_file(tmp_path / "bad.npz", config, arrays)
    with pytest.raises(ValueError, match="epochs_done' must be an integer"):
        sn.training.load_checkpoint(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match=r"initial_epoch \(4\) is past epochs \(3\)"):
        model.fit(X, y, loss=sn.SoftmaxCrossEntropy(), optimizer=sn.SGD(0.1), epochs=3,
                  initial_epoch=4)
    with pytest.raises(ValueError, match="every must be >= 1"):
        sn.training.Checkpoint(tmp_path / "x.npz", every=0)


def test_cli_checkpoint_and_resume_continue_the_run(capsys, tmp_path):
    common = ["train", "--epochs", "3", "--dtype", "float64", "--backend", "numpy",
              "--hidden", "16", "--schedule", "cosine", "--dropout", "0.1", "--quiet"]
    code, out, err = run_cli(capsys, *common, "--checkpoint", str(tmp_path / "ck-{epoch}.npz"),
                             "--save", str(tmp_path / "full.npz"))
    assert code == 0, err
    code, out, err = run_cli(capsys, *common, "--resume", str(tmp_path / "ck-1.npz"),
                             "--save", str(tmp_path / "resumed.npz"))
    assert code == 0, err
    assert "resumed from" in out and "(2 epochs in" in out
    numpy.testing.assert_allclose(sn.load(tmp_path / "resumed.npz").flat_parameters(),
                                  sn.load(tmp_path / "full.npz").flat_parameters(), rtol=0,
                                  atol=1e-10)


@pytest.mark.parametrize("changed, message", [
    ({"--optimizer": "sgd"}, "was trained with Adam"),
    ({"--dtype": "float32"}, "holds a float64 model, but this command asks for --dtype float32"),
    ({"--epochs": "1"}, "is at epoch 1; --epochs 1 leaves nothing to train"),
])
def test_cli_resume_refuses_a_different_run(capsys, tmp_path, changed, message):
    first = {"--epochs": "1", "--dtype": "float64", "--backend": "numpy"}
    options = lambda opts: [x for pair in opts.items() for x in pair]   # noqa: E731
    path = str(tmp_path / "ck.npz")
    assert run_cli(capsys, "train", "--quiet", *options(first), "--checkpoint", path)[0] == 0
    again = {**first, "--epochs": "2", **changed}
    code, out, err = run_cli(capsys, "train", "--quiet", *options(again), "--resume", path)
    assert code == 2 and message in err, err


def test_cli_checks_the_new_options_first(capsys, tmp_path):
    code, out, err = run_cli(capsys, "train", "--resume", str(tmp_path / "missing.npz"))
    assert code == 2 and "--resume: no checkpoint file at" in err
    code, out, err = run_cli(capsys, "train", "--threads", "0")
    assert code == 2 and "--threads must be >= 1" in err
    code, out, err = run_cli(capsys, "train", "--checkpoint", str(tmp_path / "no" / "c.npz"))
    assert code == 2 and "--checkpoint:" in err


def test_info_reports_mpi_and_nccl(capsys):
    code, out, err = run_cli(capsys, "info")
    assert code == 0
    mpi = [line for line in out.splitlines() if line.startswith("MPI: ")]
    assert len(mpi) == 1
    desc, why = D.mpi_status()
    assert mpi[0] == (f"MPI: {desc}" if desc else f"MPI: unavailable: {why}")
    assert "no MPI launcher: one process" in out
    assert any(line.startswith("NCCL: ") for line in out.splitlines())
