"""Data-parallel training across processes: MPI (mpi4py) on CPUs, NCCL (CuPy) on GPUs.

The model is PyTorch DDP's and Horovod's: every rank (process) holds a replica
of the model, trains on its shard of each global batch, and the gradients are
averaged by one allreduce per step, so every rank applies the same update and
the replicas stay identical. Scale-out hangs on the training loop's parts and
never reaches into a layer:

* ``ShardedBatchSource`` (a ``training.BatchSource``): every rank draws the same
  permutation, cuts it into global batches of ``world_size * batch_size`` rows
  and takes its slice of each;
* ``AllreduceGradients`` (a gradient hook): one in-place allreduce over
  ``model.flat_gradients()`` per step, weighted by the rows each rank had;
* ``DataParallel.epoch_sync`` (once per epoch, one small collective): the global
  loss and accuracy, BatchNorm running statistics averaged, and a checksum of
  every replica's weights compared;
* ``RankDropoutStreams`` (a callback): the rank is folded into each Dropout seed.

``init()`` detects the launcher (``mpiexec``/``mpirun``: MPICH, Intel MPI, Open
MPI, MVAPICH, PMIx) and returns the ``World`` (``rank``, ``world_size``).
Without a launcher it is a world of one process and mpi4py is not imported:
the same script runs unchanged. ``fit(..., distributed=True)`` does the rest.

An exception on any rank during a distributed ``fit`` prints
``scratchnet: rank R of N failed: <cause>`` on stderr and aborts the MPI job
(``MPI_Abort``, as mpi4py and ChainerMN advise), so no rank waits forever in a
collective and ``mpiexec`` exits non-zero.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import time
import zlib

import numpy

from . import layers as L
from .backends import BackendUnavailableError, get_ops
from .training import BatchSource, Callback

__all__ = ["init", "get_world", "World", "DataParallel", "ShardedBatchSource",
           "AllreduceGradients", "RankDropoutStreams", "DistributedUnavailableError",
           "ReplicaMismatchError", "detect_launcher", "default_threads", "mpi_status",
           "nccl_status", "LAUNCHERS", "BUFFER_POLICIES"]

#: Environment variables a launcher sets in every process it starts:
#: (variable holding the world size or rank, what set it).
LAUNCHERS = (
    ("PMI_SIZE", "PMI_RANK", "mpiexec (MPICH / Intel MPI)"),
    ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "mpirun (Open MPI)"),
    ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK", "mpirun (MVAPICH)"),
    (None, "PMIX_RANK", "a PMIx launcher"),
)
#: Environment variables giving the number of ranks on this node.
LOCAL_SIZE_ENV = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE")

#: What happens to BatchNorm running statistics at the end of each epoch.
BUFFER_POLICIES = ("average", "local")

INSTALL_HINT = "pip install scratchnet[mpi] (mpi4py and the mpich wheel)"


class DistributedUnavailableError(BackendUnavailableError):
    """The requested communicator cannot run here; the message names the cause."""


class ReplicaMismatchError(RuntimeError):
    """The ranks' models, data or weights differ where they must be identical."""


# -- the launcher and the world ------------------------------------------------------

def detect_launcher(environ=None):
    """``(launcher, world_size or None)`` when this process was started by an MPI
    launcher, else None. Only the environment is read: nothing is imported."""
    env = os.environ if environ is None else environ
    for size_var, rank_var, name in LAUNCHERS:
        if size_var is not None and size_var in env:
            try:
                return name, int(env[size_var])
            except ValueError:
                return name, None
        if size_var is None and rank_var in env:
            return name, None
    return None


def default_threads(local_size, cores=None):
    """BLAS/Numba threads per rank so that ranks x threads <= cores on this node:
    ``cores // local_size``, at least 1."""
    cores = _cores() if cores is None else int(cores)
    return max(1, cores // max(1, int(local_size)))


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _import_mpi(launcher=None):
    """mpi4py's MPI module, initialised; DistributedUnavailableError naming the cause."""
    try:
        import mpi4py
    except ImportError:
        where = f"this process was started by {launcher[0]}" if launcher else \
            "MPI was asked for"
        raise DistributedUnavailableError(
            f"{where}, but mpi4py is not installed: {INSTALL_HINT}") from None
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as err:
        raise DistributedUnavailableError(f"mpi4py {mpi4py.__version__} cannot load an MPI "
                                          f"library: {err}; {INSTALL_HINT}") from None
    if not MPI.Is_initialized():            # imported uninitialised (e.g. by `scratchnet info`)
        MPI.Init_thread()
        atexit.register(lambda: MPI.Is_finalized() or MPI.Finalize())
    return MPI


class World:
    """The processes of one job: ``rank``, ``world_size``, ``local_rank`` and
    ``local_size`` (ranks on this node), ``threads`` (BLAS/Numba threads of this
    rank), ``launcher`` (None for a single process) and ``mpi`` (the mpi4py
    communicator, None for a single process). ``rank, world_size = world``."""

    def __init__(self, mpi_comm=None, launcher=None):
        self.mpi = mpi_comm
        self.launcher = launcher
        if mpi_comm is None:
            self.rank, self.world_size, self.local_rank, self.local_size = 0, 1, 0, 1
        else:
            from mpi4py import MPI
            self.rank, self.world_size = mpi_comm.Get_rank(), mpi_comm.Get_size()
            local = mpi_comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
            self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
            local.Free()
        self.threads = None
        self.threads_via = ()
        self._communicators = {}

    @property
    def is_root(self):
        return self.rank == 0

    @property
    def launched(self):
        """True when an MPI launcher started this process (even as one rank)."""
        return self.mpi is not None

    def __iter__(self):
        return iter((self.rank, self.world_size))

    def __repr__(self):
        return (f"World(rank={self.rank}, world_size={self.world_size}, "
                f"local_size={self.local_size}, threads={self.threads}, "
                f"launcher={self.launcher!r})")

    def describe(self):
        """One line: who launched what, the MPI library, threads per rank."""
        if self.mpi is None:
            return "one process (no MPI launcher)"
        status, _ = mpi_status()
        threads = f", {self.threads} thread{'s' if self.threads != 1 else ''} per rank" \
            if self.threads else ""
        return (f"{self.world_size} rank{'s' if self.world_size != 1 else ''} "
                f"({self.local_size} on this node) started by {self.launcher}, "
                f"{status}{threads}")

    # -- small host collectives (Python objects) -----------------------------------
    def allgather(self, obj):
        """``[obj of rank 0, obj of rank 1, ...]`` on every rank."""
        return [obj] if self.mpi is None else self.mpi.allgather(obj)

    def bcast(self, obj, root=0):
        """Rank ``root``'s ``obj`` on every rank."""
        return obj if self.mpi is None else self.mpi.bcast(obj, root=root)

    def barrier(self):
        if self.mpi is not None:
            self.mpi.Barrier()

    # -- the gradient communicator ---------------------------------------------------
    def communicator(self, backend):
        """The allreduce for arrays of ``backend`` (a name or ops): MPI for
        NumPy/Numba arrays, NCCL for CuPy arrays (its unique id sent over MPI);
        a no-op for a single process without a launcher."""
        ops = get_ops(backend)
        if self.mpi is None:
            kind = "local"
        else:
            kind = "nccl" if ops.name == "cupy" else "mpi"
        comm = self._communicators.get(kind)
        if comm is None:
            comm = {"local": LocalCommunicator, "mpi": MPICommunicator,
                    "nccl": NCCLCommunicator}[kind](self)
            self._communicators[kind] = comm
        return comm

    # -- threads ---------------------------------------------------------------
    def limit_threads(self, threads=None):
        """Cap BLAS (threadpoolctl) and Numba threads of this rank at ``threads``
        (default: ``cores // local_size``, set by ``init``); returns the number."""
        n = self.threads if threads is None else int(threads)
        if n is None:
            return None
        if n < 1:
            raise ValueError(f"threads must be >= 1, got {n}")
        via = []
        try:
            from threadpoolctl import threadpool_limits
            threadpool_limits(limits=n)
            via.append("threadpoolctl")
        except ImportError:
            pass
        if "numba" in sys.modules:
            import numba
            numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
            via.append("numba")
        if not via or via == ["numba"]:
            _warn_once(f"scratchnet: cannot cap the BLAS threads at {n} (threadpoolctl is not "
                       "installed: pip install threadpoolctl); set OPENBLAS_NUM_THREADS / "
                       "OMP_NUM_THREADS before starting Python")
        self.threads, self.threads_via = n, tuple(via)
        return n

    # -- failing -----------------------------------------------------------------
    def fail(self, err, code=1):
        """Report ``err`` as this rank's failure on stderr and abort every rank
        (never returns while more than one rank runs)."""
        name = type(err).__name__
        text = str(err).strip() or name
        if not isinstance(err, _PLAIN_ERRORS) or os.environ.get("SCRATCHNET_DEBUG"):
            import traceback
            traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
        print(f"scratchnet: rank {self.rank} of {self.world_size} failed: {name}: {text}",
              file=sys.stderr, flush=True)
        self.abort(code)

    def abort(self, code=1):
        """Abort the whole job: NCCL communicators first, then MPI_Abort."""
        for comm in self._communicators.values():
            with contextlib.suppress(Exception):
                comm.abort()
        sys.stdout.flush()
        sys.stderr.flush()
        if self.mpi is not None:
            self.mpi.Abort(code)
        raise SystemExit(code)


_PLAIN_ERRORS = (ValueError, TypeError, FloatingPointError, OSError, ReplicaMismatchError,
                 BackendUnavailableError, KeyboardInterrupt)
_warned = set()


def _warn_once(message):
    if message not in _warned:
        _warned.add(message)
        print(message, file=sys.stderr)


_WORLD = None


def init(backend=None, threads=None, comm=None):
    """Join the job this process belongs to and return its ``World``.

    Under an MPI launcher (``mpiexec -n 4 python train.py``) the world is MPI's
    ``COMM_WORLD`` (or ``comm``, an mpi4py communicator); without one it is a
    single process and mpi4py is not imported. Calling it again returns the
    same world (``threads`` is applied again).

    backend: set up the gradient communicator for this backend now (for
    ``"cupy"``: pin each rank to the GPU of its local rank and create the NCCL
    communicator, whose unique id rank 0 broadcasts over MPI); by default it is
    chosen at ``fit`` time from the model's backend.
    threads: BLAS and Numba threads per rank. Default: ``cores // ranks on
    this node`` when there is more than one rank on the node (oversubscribed
    cores slow OpenBLAS training by an order of magnitude), else unchanged.
    """
    global _WORLD
    if _WORLD is None or (comm is not None and comm is not _WORLD.mpi):
        launcher = detect_launcher()
        if comm is not None:
            _import_mpi(launcher)
            world = World(comm, launcher[0] if launcher else "an mpi4py communicator")
        elif launcher is None:
            world = World()
        else:
            MPI = _import_mpi(launcher)
            world = World(MPI.COMM_WORLD, launcher[0])
            expected = launcher[1]
            if expected is not None and expected != world.world_size:
                raise DistributedUnavailableError(
                    f"{launcher[0]} started {expected} processes, but MPI reports a world of "
                    f"{world.world_size}: the mpiexec that started them belongs to another MPI "
                    f"than the one mpi4py loaded ({mpi_status()[0]}); run the mpiexec of the "
                    f"same installation (the mpich wheel puts one beside python)")
        if world.local_size > 1 and threads is None:
            world.threads = default_threads(world.local_size)
        _WORLD = world
    world = _WORLD
    if threads is not None or world.threads is not None:
        world.limit_threads(threads)
    if backend is not None:
        ops = get_ops(backend)
        if ops.name == "cupy" and world.mpi is not None:
            import cupy
            count = cupy.cuda.runtime.getDeviceCount()
            cupy.cuda.Device(world.local_rank % max(count, 1)).use()
        world.communicator(ops)
    return world


def get_world():
    """The world ``init`` joined, or None before ``init``."""
    return _WORLD


# -- communicators: an in-place sum over every rank ------------------------------------

class LocalCommunicator:
    """One process: the sum over one rank is the array itself."""

    name = "local"

    def __init__(self, world=None):
        self.world = world

    def allreduce_sum_(self, buf):
        return buf

    def abort(self):
        pass


class MPICommunicator:
    """``MPI_Allreduce(MPI_IN_PLACE, buf, MPI_SUM)`` on host (NumPy) arrays."""

    name = "mpi"

    def __init__(self, world):
        from mpi4py import MPI
        self._MPI, self.comm = MPI, world.mpi

    def allreduce_sum_(self, buf):
        if not (isinstance(buf, numpy.ndarray) and buf.flags.c_contiguous):
            raise TypeError("the MPI allreduce needs a contiguous NumPy array; a CuPy "
                            "model uses the NCCL communicator")
        self.comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM)
        return buf

    def abort(self):
        pass


class NCCLCommunicator:
    """``ncclAllReduce`` (sum, in place) on CuPy arrays, through ``cupy.cuda.nccl``.
    Rank 0 creates the NCCL unique id and broadcasts it over MPI; each rank
    drives one GPU (``init(backend="cupy")`` picks the GPU of its local rank)."""

    name = "nccl"

    def __init__(self, world):
        nccl = _import_nccl()
        if world.mpi is None:
            raise DistributedUnavailableError("the NCCL communicator needs an MPI launcher to "
                                              "exchange its unique id (mpiexec -n N ...)")
        uid = nccl.get_unique_id() if world.rank == 0 else None
        uid = world.bcast(uid, root=0)
        self._nccl = nccl
        self._types = {numpy.dtype("float32"): nccl.NCCL_FLOAT32,
                       numpy.dtype("float64"): nccl.NCCL_FLOAT64}
        self.comm = nccl.NcclCommunicator(world.world_size, uid, world.rank)

    def allreduce_sum_(self, buf):
        import cupy
        kind = self._types.get(numpy.dtype(buf.dtype))
        if kind is None or not isinstance(buf, cupy.ndarray) or not buf.flags.c_contiguous:
            raise TypeError(f"the NCCL allreduce needs a contiguous float32/float64 CuPy "
                            f"array, got {type(buf).__name__} of {buf.dtype}")
        stream = cupy.cuda.get_current_stream()
        self.comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, kind, self._nccl.NCCL_SUM,
                            stream.ptr)
        return buf

    def abort(self):
        self.comm.abort()


def _import_nccl():
    """``cupy.cuda.nccl``, usable; DistributedUnavailableError naming the cause."""
    import importlib.util
    if importlib.util.find_spec("cupy") is None:
        raise DistributedUnavailableError("the NCCL communicator needs CuPy, which is not "
                                          "installed: pip install scratchnet[cuda12] "
                                          "(or cuda13)")
    try:
        from cupy.cuda import nccl
    except ImportError as err:
        raise DistributedUnavailableError(f"CuPy's NCCL bindings cannot be imported: {err}") \
            from None
    if not getattr(nccl, "available", True):
        raise DistributedUnavailableError("this CuPy was built without NCCL (cupy.cuda.nccl "
                                          "is not available): install a CuPy wheel with NCCL")
    return nccl


def mpi_status():
    """``(description, None)`` when MPI can be used here, e.g. ``("MPICH 5.0.2
    (mpi4py 4.1.2)", None)``; ``(None, why)`` otherwise. Does not start MPI."""
    import importlib.util
    if importlib.util.find_spec("mpi4py") is None:
        return None, f"mpi4py is not installed: {INSTALL_HINT}"
    import mpi4py
    try:
        if "mpi4py.MPI" not in sys.modules:
            initialize = mpi4py.rc.initialize
            mpi4py.rc.initialize = False      # the library version needs no MPI_Init
            try:
                from mpi4py import MPI
            finally:
                mpi4py.rc.initialize = initialize
        from mpi4py import MPI
        version = MPI.Get_library_version()
    except (ImportError, RuntimeError, OSError) as err:
        return None, f"mpi4py {mpi4py.__version__} cannot load an MPI library: {err}"
    first = " ".join(version.strip().splitlines()[0].split()) if version.strip() else "MPI"
    first = first.replace("Version:", "").replace("  ", " ").strip()
    return f"{first} (MPI {'.'.join(map(str, MPI.Get_version()))}, mpi4py " \
           f"{mpi4py.__version__})", None


def nccl_status():
    """``(description, None)`` when NCCL (through CuPy) can be used, else ``(None, why)``."""
    try:
        nccl = _import_nccl()
        version = nccl.get_version()
    except DistributedUnavailableError as err:
        return None, str(err)
    except Exception as err:        # a CUDA or NCCL library that fails to load
        return None, f"NCCL cannot be used: {err}"
    # NCCL_VERSION_CODE: major*10000 + minor*100 + patch since 2.9, major*1000 + ... before
    base = 10000 if version >= 10000 else 1000
    major, minor, patch = version // base, (version % base) // 100, version % 100
    return f"NCCL {major}.{minor}.{patch} (cupy.cuda.nccl)", None


# -- the loop's parts -------------------------------------------------------------

class ShardedBatchSource(BatchSource):
    """The batches of rank ``rank`` of ``world_size``.

    Every rank draws the same permutation of the ``n`` rows (the same generator
    state), cuts it into global batches of ``world_size * batch_size`` rows and
    takes rows ``[rank*batch_size, (rank+1)*batch_size)`` of each, so N ranks at
    batch B see exactly the batches of one process at batch N*B.

    Uneven data: the last global batch holds ``r = n mod (N*B)`` rows; it is
    split as evenly as possible (rank k takes rows ``[k*r//N, (k+1)*r//N)``),
    so every rank takes the same number of steps and ``AllreduceGradients``
    weights each rank by its rows: the update is still the single-process one.
    A rank may get no row of that last batch (r < N): it contributes a zero
    gradient with weight 0. With ``min_batch > 1`` (BatchNorm) a last global
    batch of fewer than ``N*min_batch`` rows is folded into the one before, so
    every rank has at least ``min_batch`` rows in every step.

    ``rows`` is ``(this rank's rows, the global batch's rows)`` of the step
    being trained (set as ``epoch()`` hands out each batch).
    """

    def __init__(self, n, batch_size, rank=0, world_size=1, shuffle=True, rng=None,
                 min_batch=1):
        super().__init__(n, batch_size, shuffle=shuffle, rng=rng, min_batch=min_batch)
        self.rank, self.world_size = int(rank), int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {rank}")
        self.rows = (0, 0)

    def global_bounds(self):
        """``[(start, stop), ...]`` of the global batches in the epoch's order."""
        n, size = self.n, min(self.batch_size * self.world_size, self.n)
        cuts = list(range(0, n, size)) + [n]
        least = self.min_batch * self.world_size if self.min_batch > 1 else 1
        if len(cuts) > 2 and cuts[-1] - cuts[-2] < least:
            del cuts[-2]
        return list(zip(cuts[:-1], cuts[1:]))

    def shard(self, start, stop, rank=None):
        """This rank's ``(start, stop)`` within the global batch ``[start, stop)``."""
        k = self.rank if rank is None else rank
        m, w = stop - start, self.world_size
        return start + k * m // w, start + (k + 1) * m // w

    def bounds(self):
        return [self.shard(a, b) for a, b in self.global_bounds()]

    def gather(self, ops, X, idx):
        if len(idx) == 0:        # no row of a short last batch for this rank
            return ops.empty((0, *X.shape[1:]), X.dtype)
        return super().gather(ops, X, idx)

    def epoch(self, ops):
        """This rank's index arrays of one epoch (one host-to-device copy);
        sets ``rows`` as each batch is handed out."""
        order = self.order()
        glob = self.global_bounds()
        local = [self.shard(a, b) for a, b in glob]
        idx = ops.asarray(numpy.concatenate([order[a:b] for a, b in local]
                                            or [numpy.zeros(0, numpy.int64)]))

        def batches():
            pos = 0
            for (a, b), (ga, gb) in zip(local, glob):
                self.rows = (b - a, gb - ga)
                yield idx[pos:pos + b - a]
                pos += b - a
        return batches()


class ShardStep:
    """A train step that also takes a rank's empty share of the last batch: no
    forward, a zero gradient (weighted 0 by the allreduce)."""

    def __init__(self, step, model):
        self.step, self.model = step, model

    def __call__(self, Xb, yb):
        if Xb.shape[0] == 0:
            self.model.flat_gradients()[...] = 0
            return 0.0, 0
        return self.step(Xb, yb)


class AllreduceGradients:
    """Gradient hook: average the gradients over every rank with one in-place
    allreduce over ``model.flat_gradients()``, each rank's mean gradient weighted
    by its share of the global batch (``source.rows``): the result is the mean
    gradient of the whole global batch, on every rank. ``seconds`` and ``calls``
    add up the time spent in it."""

    def __init__(self, communicator, source):
        self.communicator, self.source = communicator, source
        self.seconds, self.calls = 0.0, 0

    def __call__(self, model):
        if isinstance(self.communicator, LocalCommunicator):
            return
        t0 = time.perf_counter()
        grads = model.flat_gradients()
        local, total = self.source.rows
        if local != total:
            grads *= grads.dtype.type(local / total)
        self.communicator.allreduce_sum_(grads)
        self.seconds += time.perf_counter() - t0
        self.calls += 1


class RankDropoutStreams(Callback):
    """Each rank draws its own dropout masks: at the start of every epoch, every
    Dropout layer's generator is seeded from (its seed, the rank, the epoch), so
    the streams differ between ranks and a run resumed at an epoch boundary
    continues the same masks on every rank."""

    def __init__(self, rank):
        self.rank = int(rank)

    def on_epoch_begin(self, model, epoch):
        for layer in L.unique_layers(model.layers):
            if isinstance(layer, L.Dropout):
                seq = numpy.random.SeedSequence([int(layer._seed), self.rank, int(epoch)])
                layer.rng = model.ops.make_rng(int(seq.generate_state(1, numpy.uint64)[0] >> 1))


def _checksum(arr, ops):
    """CRC-32 of the bytes of ``arr`` (host copy): equal only for identical values."""
    host = numpy.ascontiguousarray(ops.to_host(arr))
    return zlib.crc32(host.view(numpy.uint8).reshape(-1))


class DataParallel:
    """What ``fit(..., distributed=...)`` uses: the world, and how to assemble
    the loop's parts for it.

    ``distributed=True`` is ``DataParallel(init())``; pass
    ``DataParallel(world, buffers="local")`` to keep BatchNorm's running
    statistics per rank instead of averaging them at each epoch's end
    (``"average"``, the default: every replica then evaluates the same way).
    ``check_replicas``: compare a checksum of every rank's weights after each
    epoch (always at start-up).
    """

    def __init__(self, world=None, buffers="average", check_replicas=True):
        self.world = world if world is not None else init()
        if buffers not in BUFFER_POLICIES:
            raise ValueError(f"buffers must be one of {BUFFER_POLICIES}, got {buffers!r}")
        self.buffers, self.check_replicas = buffers, bool(check_replicas)
        self.hook = self.source = None

    @classmethod
    def of(cls, distributed):
        """``True`` / a ``World`` / a ``DataParallel`` -> a ``DataParallel``."""
        if isinstance(distributed, DataParallel):
            return distributed
        if isinstance(distributed, World):
            return cls(distributed)
        if distributed is True:
            return cls(init())
        raise TypeError(f"distributed must be True, a World (scratchnet.distributed.init()) or "
                        f"a DataParallel, got {distributed!r}")

    @property
    def rank(self):
        return self.world.rank

    @property
    def world_size(self):
        return self.world.world_size

    @property
    def is_root(self):
        return self.world.is_root

    @contextlib.contextmanager
    def guard(self):
        """An exception on one rank ends every rank (with more than one rank)."""
        try:
            yield
        except BaseException as err:
            if self.world.world_size > 1:
                self.world.fail(err)
            raise

    # -- assembling the parts --------------------------------------------------
    def assemble(self, model, step, n, batch_size, mode, shuffle, min_batch, hooks, callbacks):
        """``(source, step, hooks, callbacks)`` for this rank: the sharded source,
        the step that takes an empty share, the allreduce hook first (clipping and
        your hooks then see the averaged gradients) and the dropout streams;
        callbacks marked ``root_only`` (progress, checkpoints) run on rank 0 only."""
        world = self.world
        if world.threads is not None:
            world.limit_threads()        # again: the backend may have loaded Numba since
        per_rank = -(-n // world.world_size) if mode == "full_batch" else batch_size
        self.source = ShardedBatchSource(n, per_rank, world.rank, world.world_size,
                                         shuffle=shuffle, rng=model._data_rng,
                                         min_batch=min_batch)
        self.hook = AllreduceGradients(world.communicator(model.ops), self.source)
        callbacks = [cb for cb in callbacks
                     if world.is_root or not getattr(cb, "root_only", False)]
        if world.world_size > 1:
            callbacks.insert(0, RankDropoutStreams(world.rank))
        return self.source, ShardStep(step, model), [self.hook, *hooks], callbacks

    def start(self, model, optimizer, X, y, settings):
        """The start-up check, on every rank: the same model (layers, parameter
        count and shapes, dtype, backend), optimizer, data and fit settings, and
        the same weights; then rank 0's data-order generator on every rank.
        Raises ReplicaMismatchError, the same on every rank, naming what differs."""
        world = self.world
        if world.world_size == 1:
            return
        ops = model.ops
        mine = {
            "parameter count": model.count_params(),
            "parameter shapes": [(p, tuple(getattr(layer, name).shape))
                                 for p, layer, name in model.named_parameters()],
            "layers": model.get_config()["layers"],
            "dtype": model.dtype.name,
            "backend": ops.name,
            "optimizer": (type(optimizer).__name__, optimizer.get_config()),
            "training data": (tuple(X.shape), _checksum(X, ops), tuple(y.shape),
                              _checksum(y, ops)),
            "fit settings": settings,
            "weights": _checksum(model.flat_parameters(), ops),
        }
        everyone = world.allgather(mine)
        _compare(everyone, "at start-up", hint={
            "weights": "build the model with the same seed on every rank, or load the same "
                       "file",
            "training data": "give every rank the same data (each takes its own shard)",
        })
        state = world.bcast(model._data_rng.bit_generator.state if world.is_root else None)
        model._data_rng.bit_generator.state = state

    def epoch_sync(self, model, epoch, sums):
        """Once per epoch, one small collective: the sums of loss, hits and rows
        over every rank (every rank reports the global figures), BatchNorm's
        running statistics averaged (``buffers="average"``), and every replica's
        weight checksum compared."""
        world = self.world
        if world.world_size == 1:
            return sums
        ops = model.ops
        mine = {k: float(v) for k, v in sums.items()}
        buffers = [ops.to_host(getattr(layer, name)) for _, layer, name in model._buffers] \
            if self.buffers == "average" else []
        check = _checksum(model.flat_parameters(), ops) if self.check_replicas else None
        everyone = world.allgather((mine, buffers, check))
        total = {k: sum(e[0][k] for e in everyone) for k in mine}     # rank order: same everywhere
        if buffers:
            for i, (_, layer, name) in enumerate(model._buffers):
                mean = sum(e[1][i] for e in everyone) / len(everyone)
                getattr(layer, name)[...] = ops.asarray(mean.astype(buffers[i].dtype))
        if self.check_replicas:
            sums_ = [e[2] for e in everyone]
            bad = [r for r, c in enumerate(sums_) if c != sums_[0]]
            if bad:
                raise ReplicaMismatchError(
                    f"after epoch {epoch + 1} the weights of rank(s) "
                    f"{', '.join(map(str, bad))} differ from rank 0's (checksums "
                    f"{', '.join(f'{c:08x}' for c in sums_)}): the replicas drifted apart "
                    f"(a different backend or BLAS on some rank, or a hook that changes one "
                    f"rank's gradients)")
        return total


def _compare(everyone, when, hint):
    """Raise ReplicaMismatchError for the first field in which a rank differs
    from rank 0 (fields in the order given)."""
    first = everyone[0]
    for key in first:
        for rank, other in enumerate(everyone[1:], start=1):
            if other.get(key) != first[key]:
                detail = _difference(key, first[key], other.get(key), rank)
                if key == "parameter count" and other.get("parameter shapes") != \
                        first.get("parameter shapes"):
                    detail += " (" + _difference("parameter shapes", first["parameter shapes"],
                                                 other["parameter shapes"], rank) + ")"
                more = f"; {hint[key]}" if key in hint else ""
                raise ReplicaMismatchError(f"the ranks differ {when}: {detail}{more}")


def _difference(key, mine, theirs, rank):
    if key == "parameter count":
        return f"rank 0's model has {mine:,} parameters, rank {rank}'s {theirs:,}"
    if key == "parameter shapes":
        for a, b in zip(mine, theirs):
            if a != b:
                if a[0] == b[0]:
                    return f"parameter {a[0]} has shape {a[1]} on rank 0, {b[1]} on rank {rank}"
                return f"parameter {a[0]} {a[1]} on rank 0 is {b[0]} {b[1]} on rank {rank}"
        return f"rank 0's model has {len(mine)} parameter arrays, rank {rank}'s {len(theirs)}"
    if key == "layers":
        for i, (a, b) in enumerate(zip(mine, theirs)):
            if a != b:
                return f"layer {i} is {_spec(a)} on rank 0 and {_spec(b)} on rank {rank}"
        return f"rank 0's model has {len(mine)} layers, rank {rank}'s {len(theirs)}"
    if key == "weights":
        return f"rank {rank}'s weights differ from rank 0's (checksum {theirs:08x} vs {mine:08x})"
    return f"{key}: {mine!r} on rank 0, {theirs!r} on rank {rank}"


def _spec(spec):
    config = ", ".join(f"{k}={v!r}" for k, v in spec.get("config", {}).items()
                       if not isinstance(v, (list, dict)))
    return f"{spec.get('class')}({config})"
