"""Tests of astromix.parallel: parallel_map over threads, processes, dask.distributed and MPI."""

import functools
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

import pytest

import astromix
from astromix.errors import AstromixError, BatchError, InputError
from astromix.parallel import ItemFailure, parallel_map
from astromix.photometry import BatchError as PhotometryBatchError

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # so that worker processes find the helper module too
    sys.path.insert(0, HERE)

import _parallel_helpers as helpers  # noqa: E402

# the first items take the longest, so they finish last
SLOW_FIRST = [(i, 0.05 * (5 - i)) for i in range(6)]
EXPECTED = [i * i for i in range(6)]


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_order_is_kept_when_items_finish_out_of_order(kind):
    pool_class = ThreadPoolExecutor if kind == "threads" else ProcessPoolExecutor
    with pool_class(max_workers=2) as pool:
        results = parallel_map(helpers.slow_square, SLOW_FIRST, executor=pool, progress=False)
        # the executor is left open for the caller
        assert pool.submit(abs, -2).result() == 2
    assert [r[0] for r in results] == EXPECTED
    if kind == "processes":
        assert os.getpid() not in {pid for _, pid in results}


def test_serial_and_default_paths():
    items = [(i, 0.0) for i in range(4)]
    serial = parallel_map(helpers.slow_square, items, executor="serial", progress=False)
    assert [r[0] for r in serial] == [0, 1, 4, 9]
    assert {pid for _, pid in serial} == {os.getpid()}
    # the default: one item runs here, several in a process pool that is shut down at the end
    (one,) = parallel_map(helpers.slow_square, items[:1], progress=False)
    assert one[1] == os.getpid()
    several = parallel_map(helpers.slow_square, items, max_workers=2, progress=False)
    assert [r[0] for r in several] == [0, 1, 4, 9]
    assert os.getpid() not in {pid for _, pid in several}
    # functools.partial of a builtin, generators and empty inputs
    assert parallel_map(functools.partial(pow, 2), (i for i in range(5)), executor="serial",
                        progress=False) == [1, 2, 4, 8, 16]
    assert parallel_map(abs, [], progress=False) == []
    assert parallel_map(abs, iter([]), executor="serial") == []


@pytest.mark.parametrize("executor", ["serial", "threads", "processes"])
def test_errors_name_the_item_and_keep_the_cause(executor):
    pool = {"threads": ThreadPoolExecutor, "processes": ProcessPoolExecutor}.get(executor)
    pool = pool(max_workers=2) if pool else None
    labels = [f"exp{i}" for i in range(7)]
    try:
        ex = pool or "serial"
        # an astromix error keeps its class, with the label in front of the message
        with pytest.raises(InputError, match=r"^exp3: bad value 3$") as info:
            parallel_map(helpers.square_or_fail, range(7), executor=ex, labels=labels,
                         progress=False)
        err = info.value
        assert err.label == err.name == "exp3" and err.index == 3
        assert isinstance(err.__cause__, InputError) and err.original is err.__cause__
        assert str(err.original) == "bad value 3"
        # any other exception becomes a BatchError; the first failure in input order wins
        with pytest.raises(BatchError, match=r"^item 1: failed with ZeroDivisionError") as info:
            parallel_map(helpers.square_or_fail, [4, 5, 3], executor=ex, progress=False)
        err = info.value
        assert isinstance(err, AstromixError) and isinstance(err, PhotometryBatchError)
        assert err.label == err.name == "item 1" and err.index == 1
        assert isinstance(err.original, ZeroDivisionError) and err.__cause__ is err.original
    finally:
        if pool:
            pool.shutdown()


def test_a_failure_cancels_the_items_not_started(tmp_path):
    # one worker: item 3 fails at once, so the items after it are never started; those
    # after it take 0.2 s each, so that the cancellation does not race the worker (with
    # no delay a busy machine's worker had started them all before the caller woke up)
    items = [(v, str(tmp_path), 0.0 if v <= 3 else 0.2) for v in (1, 2, 3, 4, 6, 7, 8, 9)]
    with ThreadPoolExecutor(max_workers=1) as pool:
        gate = threading.Event()
        pool.submit(gate.wait)            # hold the worker while everything is queued
        timer = threading.Timer(0.2, gate.set)
        timer.start()
        with pytest.raises(InputError, match="^item 2: bad value 3"):
            parallel_map(helpers.touch_and_square, items, executor=pool, progress=False)
        timer.join()
    started = sorted(int(p.name) for p in tmp_path.iterdir())
    assert started[:3] == [1, 2, 3] and len(started) < len(items)


@pytest.mark.parametrize("executor", ["serial", "processes"])
def test_return_exceptions_keeps_the_other_results(executor):
    pool = ProcessPoolExecutor(2) if executor == "processes" else "serial"
    try:
        results = parallel_map(helpers.square_or_fail, range(7), executor=pool, progress=False,
                               labels=list("abcdefg"), return_exceptions=True)
    finally:
        if executor == "processes":
            pool.shutdown()
    assert [results[i] for i in (0, 1, 2, 4, 6)] == [0, 1, 4, 16, 36]
    bad, worse = results[3], results[5]
    assert isinstance(bad, ItemFailure) and isinstance(worse, ItemFailure)
    assert (bad.label, bad.index, type(bad.exception)) == ("d", 3, InputError)
    assert (worse.label, worse.index, type(worse.exception)) == ("f", 5, ZeroDivisionError)
    assert "ZeroDivisionError" in worse.traceback and "square_or_fail" in worse.traceback
    assert "ItemFailure(label='d', index=3" in repr(bad)
    with pytest.raises(InputError, match="^d: bad value 3") as info:
        bad.reraise()
    assert info.value.__cause__ is bad.exception


@pytest.mark.parametrize("executor", ["serial", "threads"])
def test_progress_bar(executor, capfd):
    pool = ThreadPoolExecutor(2) if executor == "threads" else "serial"
    try:
        quiet = parallel_map(helpers.slow_square, SLOW_FIRST, executor=pool, progress=False)
        out, err = capfd.readouterr()
        assert out == "" and err == ""
        loud = parallel_map(helpers.slow_square, SLOW_FIRST, executor=pool, desc="squares")
        out, err = capfd.readouterr()
        assert out == "" and "squares" in err and "6/6" in err
        # failures are counted as finished items too, and the bar changes no error
        parallel_map(helpers.square_or_fail, range(7), executor=pool, return_exceptions=True)
        assert "7/7" in capfd.readouterr().err
        with pytest.raises(InputError, match="^item 3: "):
            parallel_map(helpers.square_or_fail, range(7), executor=pool)
    finally:
        if executor == "threads":
            pool.shutdown()
    assert [r[0] for r in quiet] == [r[0] for r in loud] == EXPECTED


def test_labels():
    class Named:
        def __init__(self, name):
            self.name = name

    items = ["/data/a.fits", Named("exp 7"), Named(3), 12, b"/x/b.fits"]
    out = parallel_map(functools.partial(int, base=7), items, executor="serial",
                       progress=False, return_exceptions=True)
    assert [f.label for f in out] == ["a.fits", "exp 7", "item 2", "item 3", "b.fits"]
    # an explicit label wins; labels must match the items
    with pytest.raises(InputError, match="labels has 1 entries for 2 items"):
        parallel_map(abs, [1, 2], labels=["x"])
    with pytest.raises(InputError, match="sequence of strings"):
        parallel_map(abs, [1, 2], labels="xy")


def test_bad_arguments_are_refused_clearly():
    with pytest.raises(InputError, match="executor must be a concurrent.futures.Executor"):
        parallel_map(abs, [1, 2], executor="processes")
    with pytest.raises(InputError, match="executor must be a concurrent.futures.Executor"):
        parallel_map(abs, [], executor=4)
    with pytest.raises(InputError, match="max_workers must be a positive integer"):
        parallel_map(abs, [1, 2], max_workers=0)
    with pytest.raises(InputError, match="func must be callable"):
        parallel_map(None, [1, 2])
    # a closed executor: a clear error naming the first item, not a hang
    pool = ThreadPoolExecutor(1)
    pool.shutdown()
    with pytest.raises(BatchError, match="^item 0: could not be submitted"):
        parallel_map(abs, [1, 2], executor=pool, progress=False)


def test_any_executor_subclass_works():
    class Inline(Executor):
        """A minimal Executor running each call at submit time."""

        def submit(self, fn, /, *args, **kwargs):
            from concurrent.futures import Future

            future = Future()
            try:
                future.set_result(fn(*args, **kwargs))
            except Exception as exc:
                future.set_exception(exc)
            return future

    assert parallel_map(abs, [-1, -2], executor=Inline(), progress=False) == [1, 2]
    out = parallel_map(helpers.square_or_fail, [2, 3], executor=Inline(), progress=False,
                       return_exceptions=True)
    assert out[0] == 4 and isinstance(out[1], ItemFailure)


# -- dask.distributed --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=":0", silence_logs=logging.CRITICAL)
    client = distributed.Client(cluster)
    client.run(exec, f"import sys; sys.path.insert(0, {HERE!r})")  # to import the helpers
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def test_dask_distributed_executor(dask_client):
    executor = dask_client.get_executor()
    t0 = time.perf_counter()
    results = parallel_map(helpers.slow_square, SLOW_FIRST, executor=executor, progress=False)
    assert [r[0] for r in results] == EXPECTED
    assert os.getpid() not in {pid for _, pid in results}
    assert time.perf_counter() - t0 < 20
    # pure=False: fresh task keys for each call, so that tasks cancelled after the failure
    # below are never confused with the same calls submitted again
    executor = dask_client.get_executor(pure=False)
    # one failing item only: dask may cancel lazily, so with two failures either could
    # be the first to finish (see parallel_map's notes)
    with pytest.raises(InputError, match=r"^exp3: bad value 3") as info:
        parallel_map(helpers.square_or_fail, range(5), executor=executor, progress=False,
                     labels=[f"exp{i}" for i in range(5)])
    assert info.value.index == 3 and isinstance(info.value.__cause__, InputError)
    out = parallel_map(helpers.square_or_fail, range(6), executor=executor, progress=False,
                       return_exceptions=True)
    assert [type(r) for r in out[3:]] == [ItemFailure, int, ItemFailure]
    assert out[:3] == [0, 1, 4] and isinstance(out[5].exception, ZeroDivisionError)


def test_dask_default_executor_reruns_after_a_failure(dask_client):
    """With ``Client.get_executor()`` as it comes (``pure=True``), a batch that failed
    and was cancelled, run again over the same items, gives every good item's result:
    parallel_map submits with pure=False.  Before, the calls of the second batch
    shared the task keys of the first, cancelled ones, and came back as
    ItemFailure(CancelledError)."""
    executor = dask_client.get_executor()
    values = list(range(10, 40))
    items = ["bad"] + [(v, 0.05) for v in values]  # "bad": slow_square fails at once
    with pytest.raises(BatchError, match="^bad: failed with ValueError"):
        parallel_map(helpers.slow_square, items, executor=executor, progress=False)
    out = parallel_map(helpers.slow_square, items, executor=executor, progress=False,
                       return_exceptions=True)
    assert isinstance(out[0], ItemFailure) and isinstance(out[0].exception, ValueError)
    assert [r if isinstance(r, ItemFailure) else r[0] for r in out[1:]] \
        == [v * v for v in values]


def test_dask_is_not_imported_without_a_dask_executor():
    code = ("import sys; from concurrent.futures import ThreadPoolExecutor; "
            "from astromix.parallel import parallel_map; "
            "pool = ThreadPoolExecutor(2); "
            "assert parallel_map(abs, [-1, -2], executor=pool, progress=False) == [1, 2]; "
            "pool.shutdown(); print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('distributed', 'dask')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


# -- MPI -------------------------------------------------------------------------------------

MPI_SCRIPT = """
import sys

from mpi4py.futures import MPIPoolExecutor

import _parallel_helpers as helpers
from astromix.errors import InputError
from astromix.parallel import ItemFailure, parallel_map

if __name__ == "__main__":
    items = [(i, 0.05 * (5 - i)) for i in range(6)]
    with MPIPoolExecutor() as executor:
        results = parallel_map(helpers.slow_square, items, executor=executor, progress=False)
        assert [r[0] for r in results] == [i * i for i in range(6)], results
        pids = {pid for _, pid in results}
        out = parallel_map(helpers.square_or_fail, range(6), executor=executor,
                           progress=False, return_exceptions=True)
        assert isinstance(out[3], ItemFailure) and out[3].label == "item 3", out
        try:
            parallel_map(helpers.square_or_fail, range(6), executor=executor, progress=False)
        except InputError as exc:
            assert str(exc) == "item 3: bad value 3", exc
        else:
            raise AssertionError("no error")
    print("ordered", [r[0] for r in results], "workers", len(pids))
"""


def test_mpi4py_futures_under_mpiexec(tmp_path):
    pytest.importorskip("mpi4py")
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("mpiexec is not on PATH")
    script = tmp_path / "mpi_map.py"
    script.write_text(textwrap.dedent(MPI_SCRIPT))
    env = dict(os.environ)
    package_root = os.path.dirname(os.path.dirname(astromix.__file__))
    env["PYTHONPATH"] = os.pathsep.join([HERE, package_root])
    # Open MPI refuses to run as root without these; it may also want more slots than cores
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", PRTE_MCA_rmaps_default_mapping_policy=
               ":oversubscribe")
    try:
        proc = subprocess.run([mpiexec, "-n", "3", sys.executable, "-m", "mpi4py.futures",
                               str(script)], env=env, capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail("mpiexec -n 3 did not finish within 120 s")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ordered [0, 1, 4, 9, 16, 25] workers 2" in proc.stdout, proc.stdout + proc.stderr
