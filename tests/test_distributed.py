"""Data-parallel training on Ray (graphc/distributed.py, docs/distributed.md).

One local Ray cluster (2 CPUs, no dashboard, nothing outside this machine) serves the
module; the tests that need it are skipped when Ray (the ``distributed`` extra) is not
installed.  Select them with ``-m distributed``.
"""

import logging
import os
import pickle
import signal
import subprocess
import sys

import numpy as np
import pytest

import graphc as gc
import graphc.distributed as dist
import graphc.nn
import graphc.optim
import graphc.train

pytestmark = pytest.mark.distributed

N, FEATURES, CLASSES, GLOBAL_BATCH = 80, 6, 3, 16  # 5 steps per epoch


@pytest.fixture(scope="module")
def ray():
    ray = pytest.importorskip("ray", reason="the distributed extra (Ray) is not installed")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def pool(ray):
    """Two replica processes shared by the tests (starting one takes seconds)."""
    workers = dist.Workers(2)
    yield workers
    workers.close()


def make_step(batch):
    x, y = gc.input("x", (batch, FEATURES)), gc.input("y", (batch,), "int64")
    model = gc.nn.Sequential(gc.nn.Dense(FEATURES, 8, activation="tanh", name="h"),
                             gc.nn.Dense(8, CLASSES, name="o"), name="m")
    loss = gc.softmax_cross_entropy(model(x, training=True), y)
    return gc.train.make_train_step(loss, gc.optim.Adam(lr=0.05), backend="numpy", seed=3)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return {"x": rng.normal(size=(N, FEATURES)).astype(np.float32),
            "y": rng.integers(0, CLASSES, N)}


@pytest.fixture(scope="module")
def undisturbed(pool, data):
    """Two workers, two epochs (10 steps), with the values after step 5 kept."""
    step, after5 = make_step(GLOBAL_BATCH // 2), {}

    def keep(s, workers):
        if s.step == 5:
            after5.update({k: v.copy() for k, v in s.params.items()})

    hist = dist.fit(step, data, epochs=2, workers=pool, progress=False, on_step=keep)
    return step, hist, after5


def rel_error(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.slow  # the Ray cluster and its worker processes
def test_one_worker_equals_one_process(ray, data, capsys):
    # First in the module: its own one-worker pool must start before `pool` takes both CPUs.
    single = make_step(GLOBAL_BATCH)
    hist1 = gc.train.fit(single, data, epochs=1, progress=False)
    one = make_step(GLOBAL_BATCH)
    hist = gc.train.fit(one, data, epochs=1, workers=1, progress="print")
    line = capsys.readouterr().out.strip().splitlines()[-1]
    for n, v in single.values.items():  # the same float32 operations in the same order
        np.testing.assert_array_equal(one.values[n], v)
    assert hist["loss"] == hist1["loss"]
    assert line.startswith("epoch 1/1  loss ") and line.endswith("samples/s, 1 worker)")


@pytest.mark.slow  # the Ray cluster and its worker processes
def test_two_workers_equal_one_process_on_the_full_batch(undisturbed, data):
    single = make_step(GLOBAL_BATCH)
    gc.train.fit(single, data, epochs=1, progress=False)  # 5 steps, no Ray
    _, _, after5 = undisturbed
    errors = {n: rel_error(after5[n], single.params[n]) for n in single.params}
    print("relative error after 5 steps, 2 workers vs 1 process:", errors)
    assert max(errors.values()) < 1e-5


@pytest.mark.slow  # the Ray cluster and its worker processes
def test_batch_norm_running_statistics_are_averaged_over_workers(pool, data):
    def bn_step(batch):
        x, y = gc.input("x", (batch, FEATURES)), gc.input("y", (batch,), "int64")
        model = gc.nn.Sequential(gc.nn.Dense(FEATURES, 4, name="d"), gc.nn.BatchNorm(4, name="bn"),
                                 gc.nn.Dense(4, CLASSES, name="o"), name="m")
        loss = gc.softmax_cross_entropy(model(x, training=True), y)
        return gc.train.make_train_step(loss, gc.optim.SGD(lr=0.1), model=model,
                                        backend="numpy")

    one_step = {k: v[:GLOBAL_BATCH] for k, v in data.items()}
    single, split = bn_step(GLOBAL_BATCH), bn_step(GLOBAL_BATCH // 2)
    gc.train.fit(single, one_step, progress=False)
    gc.train.fit(split, one_step, workers=pool, progress=False)
    # the mean of the shards' batch means is the batch mean: exact up to rounding
    np.testing.assert_allclose(split.values["bn_running_mean"],
                               single.values["bn_running_mean"], rtol=1e-6, atol=1e-7)
    assert not np.allclose(split.values["bn_running_var"], single.values["bn_running_var"],
                           rtol=1e-6)  # per-shard variances: documented, as DDP


@pytest.mark.slow  # the Ray cluster and its worker processes
def test_a_killed_worker_is_replaced_and_nothing_is_lost(pool, undisturbed, data, caplog,
                                                        capsys):
    reference, ref_hist, _ = undisturbed
    killed = []

    def kill_worker_1(step, workers):
        if step.step == 3 and not killed:
            killed.append(workers.pids[1])
            os.kill(workers.pids[1], signal.SIGKILL)

    step = make_step(GLOBAL_BATCH // 2)
    with caplog.at_level(logging.WARNING, logger="graphc.distributed"):
        hist = dist.fit(step, data, epochs=2, workers=pool, progress="bar",
                        on_step=kill_worker_1)
    lines = [r.getMessage() for r in caplog.records if r.name == "graphc.distributed"]
    print("\n".join(lines))
    assert len(lines) == 1
    assert lines[0].startswith(f"worker 1 (pid {killed[0]}) died at step 4 (")
    assert lines[0].endswith("recomputing its shard of step 4")
    assert step.step == 10
    for n, v in reference.values.items():
        np.testing.assert_array_equal(step.values[n], v)
    assert hist["loss"] == ref_hist["loss"]
    bar = capsys.readouterr().err
    assert "samples/s=" in bar and "workers=2" in bar and "10/10" in bar


@pytest.mark.slow  # the Ray cluster and its worker processes
def test_resume_from_a_checkpoint_is_bit_for_bit(pool, undisturbed, data, tmp_path):
    reference, ref_hist, _ = undisturbed
    path = tmp_path / "run.npz"

    class Crash(Exception):
        pass

    def crash_at_step_7(step, workers):
        if step.step == 7:
            raise Crash

    with pytest.raises(Crash):
        dist.fit(make_step(GLOBAL_BATCH // 2), data, epochs=2, workers=pool, progress=False,
                 checkpoint=path, checkpoint_every=3, on_step=crash_at_step_7)
    saved = np.load(path)
    assert (int(saved["opt_step"]), int(saved["fit_epoch"]), int(saved["fit_batch"])) == \
        (6, 1, 1)
    assert os.listdir(tmp_path) == ["run.npz"]  # no temporary file left behind
    step = make_step(GLOBAL_BATCH // 2)
    hist = gc.train.fit(step, data, epochs=2, workers=pool, progress=False, checkpoint=path,
                        resume=path)
    assert step.step == 10
    for n, v in {**reference.values, **reference.opt_state}.items():
        np.testing.assert_array_equal({**step.values, **step.opt_state}[n], v)
    assert hist["loss"] == ref_hist["loss"]
    assert int(np.load(path)["opt_step"]) == 10

    with pytest.raises(gc.train.CheckpointError) as err:  # a different global batch
        gc.train.fit(make_step(GLOBAL_BATCH // 2), data, epochs=2, workers=1, resume=path)
    assert str(err.value).endswith("cannot resume this fit:\n  it was written with "
                                   "global_batch=16, this fit has global_batch=8")


@pytest.mark.slow  # the Ray cluster and its worker processes
def test_a_worker_error_surfaces_as_its_own_type_with_the_worker_traceback(pool, data):
    bad = {"x": data["x"], "y": data["y"].copy()}
    bad["y"][12] = 7  # in worker 1's shard of the first batch (no shuffling)
    with pytest.raises(gc.FeedError) as err:
        gc.train.fit(make_step(GLOBAL_BATCH // 2), bad, workers=pool, shuffle=False,
                     progress=False)
    text = str(err.value)
    print(text)
    assert text.startswith("feed 'y' holds label 7 at index (4,), out of range for a loss "
                           "over 3 classes")
    assert f"(raised in data-parallel worker 1, pid {pool.pids[1]}; its traceback:)" in text
    assert 'graphc/losses.py", line' in text and "in check_feeds" in text


def test_an_interrupted_checkpoint_write_keeps_the_old_file(tmp_path, monkeypatch):
    step = make_step(4)
    path = dist.save_checkpoint(tmp_path / "ck", step, {"epoch": 0, "batch": 1})
    before = dict(np.load(path))

    def broken_write(f, arrays):
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(dist, "write_params", broken_write)
    step.values["h_W"] = step.values["h_W"] + 1
    with pytest.raises(OSError, match="disk full"):
        dist.save_checkpoint(path, step, {"epoch": 0, "batch": 2})
    after = dict(np.load(path))
    assert os.listdir(tmp_path) == ["ck.npz"]  # the temporary file is removed
    assert after.keys() == before.keys()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])


def test_packed_graphs_pickle_and_rebuild_the_same_nodes():
    cloudpickle = pytest.importorskip("cloudpickle")  # Ray's pickler; comes with Ray
    step = make_step(4)
    plan = dist.Plan(step)
    outputs = dist.unpack(plan.program)
    again = dist.unpack(pickle.loads(cloudpickle.dumps(plan.program)))
    assert [t.digest for t in again] == [t.digest for t in outputs]  # the same structure
    assert [t.shape for t in outputs[1:5]] == [(6, 8), (8,), (8, 3), (3,)]  # the gradients


def test_uneven_shards_are_weighted_by_their_sizes(data):
    """Shards of 3 and 1 samples average to the gradient of the 4: the driver's update
    equals one process's step on the 4 (Plan and Replica in this process, no Ray)."""
    batch = {k: v[:4] for k, v in data.items()}
    single, three, one = make_step(4), make_step(3), make_step(1)
    single(batch)
    shards = []
    for step, index in ((three, np.arange(3)), (one, np.arange(3, 4))):
        replica, plan = dist.Replica(), dist.Plan(step)
        replica.load(plan.program, plan.backend, batch)
        shards.append((len(index), replica.grads(three.values, 0, index)))
    dist.Plan(three).apply(three, shards)
    for n, v in single.params.items():
        np.testing.assert_allclose(three.params[n], v, rtol=1e-6, atol=1e-7)


def test_import_graphc_does_not_import_ray():
    code = "import sys, graphc, graphc.train; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def test_workers_without_ray_says_what_to_install(monkeypatch, data):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'graphc\[distributed\]'"):
        gc.train.fit(make_step(8), data, workers=2)
    with pytest.raises(ValueError, match="give workers= too"):
        gc.train.fit(make_step(8), data, resume="run.npz")


def test_resuming_a_finished_run_leaves_its_checkpoint_as_it_is(pool, data, tmp_path):
    """fit(epochs=E, resume=ck) with E at or below the checkpoint's epoch trains nothing; it
    used to rewrite the position as (E, batch 0) and clear the running totals."""
    path = tmp_path / "run.npz"
    dist.fit(make_step(GLOBAL_BATCH // 2), data, epochs=2, workers=pool, progress=False,
             checkpoint=path)
    before = dict(np.load(path))
    step = make_step(GLOBAL_BATCH // 2)
    dist.fit(step, data, epochs=1, workers=pool, progress=False, checkpoint=path,
             resume=path)
    after = dict(np.load(path))
    assert before.keys() == after.keys() and step.step == 10
    for k, v in before.items():
        np.testing.assert_array_equal(after[k], v)


def test_a_module_named_fit_resumes_and_a_dynamic_batch_trains_on_workers(pool, data,
                                                                          tmp_path):
    """Params fit_W, fit_b were taken for the run's position (``fit_...``); a step with a
    dynamic batch dimension was refused with workers ("do not share one batch size")."""
    x, y = gc.input("x", (None, FEATURES)), gc.input("y", (None,), "int64")
    loss = gc.softmax_cross_entropy(gc.nn.Dense(FEATURES, CLASSES, name="fit")(x), y)
    step = gc.train.make_train_step(loss, gc.optim.SGD(lr=0.1), backend="numpy")
    path = tmp_path / "fit.npz"
    dist.fit(step, data, epochs=1, batch_size=GLOBAL_BATCH, workers=pool, progress=False,
             checkpoint=path)
    assert step.step == N // GLOBAL_BATCH
    again = gc.train.make_train_step(loss, gc.optim.SGD(lr=0.1), backend="numpy")
    dist.fit(again, data, epochs=1, batch_size=GLOBAL_BATCH, workers=pool, progress=False,
             resume=path)
    for k, v in step.values.items():
        np.testing.assert_array_equal(again.values[k], v)
    with pytest.raises(ValueError, match="dynamic: give batch_size, the global batch"):
        dist.fit(step, data, epochs=1, batch_size=15, workers=pool, progress=False)
