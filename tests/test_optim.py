"""gc.optim (graphc/optim.py) against torch.optim: every optimizer's parameters after each
of 5 steps, in float64, with the update compiled into the training step; gradient clipping
against clip_grad_norm_; schedules against torch.optim.lr_scheduler."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
import graphc.optim as optim
from graphc.train import make_train_step

torch = pytest.importorskip("torch")

STEPS = 5


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(6, 3)), "y": rng.normal(size=(6, 4)),
            "W": rng.normal(size=(3, 4)), "b": rng.normal(size=(4,))}


def _gc_run(opt, data, steps=STEPS):
    x, y = gc.input("x", (6, 3), "float64"), gc.input("y", (6, 4), "float64")
    W, b = gc.param("W", (3, 4), dtype="float64"), gc.param("b", (4,), dtype="float64")
    loss = gc.mean(gc.square(gc.tanh(x @ W + b) - y)) + 0.1 * gc.sum(W * W * W)
    step = make_train_step(loss, opt, [W, b], backend="numpy",
                           initial={"W": data["W"], "b": data["b"]})
    trace = []
    for _ in range(steps):
        step({"x": data["x"], "y": data["y"]})
        trace.append((step.values["W"].copy(), step.values["b"].copy()))
    return trace


def _torch_run(make_opt, data, steps=STEPS, clip=None, scheduler=None):
    W = torch.tensor(data["W"], requires_grad=True)
    b = torch.tensor(data["b"], requires_grad=True)
    x, y = torch.tensor(data["x"]), torch.tensor(data["y"])
    opt = make_opt([W, b])
    sched = scheduler(opt) if scheduler else None
    trace = []
    for _ in range(steps):
        opt.zero_grad()
        loss = ((torch.tanh(x @ W + b) - y) ** 2).mean() + 0.1 * (W ** 3).sum()
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_([W, b], clip)
        opt.step()
        if sched:
            sched.step()
        trace.append((W.detach().numpy().copy(), b.detach().numpy().copy()))
    return trace


TO = torch.optim
CASES = {
    "sgd": (lambda: optim.SGD(lr=0.1), lambda p: TO.SGD(p, lr=0.1)),
    "sgd_momentum": (lambda: optim.SGD(lr=0.1, momentum=0.9),
                     lambda p: TO.SGD(p, lr=0.1, momentum=0.9)),
    "sgd_nesterov_wd": (lambda: optim.SGD(lr=0.1, momentum=0.9, nesterov=True,
                                          weight_decay=0.05),
                        lambda p: TO.SGD(p, lr=0.1, momentum=0.9, nesterov=True,
                                         weight_decay=0.05)),
    "sgd_dampening": (lambda: optim.SGD(lr=0.1, momentum=0.8, dampening=0.5),
                      lambda p: TO.SGD(p, lr=0.1, momentum=0.8, dampening=0.5)),
    "adagrad": (lambda: optim.AdaGrad(lr=0.1), lambda p: TO.Adagrad(p, lr=0.1)),
    "adagrad_all": (lambda: optim.AdaGrad(lr=0.1, lr_decay=0.05, weight_decay=0.1,
                                          initial_accumulator_value=0.2),
                    lambda p: TO.Adagrad(p, lr=0.1, lr_decay=0.05, weight_decay=0.1,
                                         initial_accumulator_value=0.2)),
    "rmsprop": (lambda: optim.RMSprop(lr=0.01), lambda p: TO.RMSprop(p, lr=0.01)),
    "rmsprop_all": (lambda: optim.RMSprop(lr=0.01, alpha=0.9, momentum=0.5, centered=True,
                                          weight_decay=0.1),
                    lambda p: TO.RMSprop(p, lr=0.01, alpha=0.9, momentum=0.5, centered=True,
                                         weight_decay=0.1)),
    "adam": (lambda: optim.Adam(lr=0.05), lambda p: TO.Adam(p, lr=0.05)),
    "adam_l2_amsgrad": (lambda: optim.Adam(lr=0.05, betas=(0.8, 0.99), weight_decay=0.1,
                                           amsgrad=True),
                        lambda p: TO.Adam(p, lr=0.05, betas=(0.8, 0.99), weight_decay=0.1,
                                          amsgrad=True)),
    "adamw": (lambda: optim.AdamW(lr=0.05), lambda p: TO.AdamW(p, lr=0.05)),
    "adamw_amsgrad": (lambda: optim.AdamW(lr=0.05, weight_decay=0.3, amsgrad=True),
                      lambda p: TO.AdamW(p, lr=0.05, weight_decay=0.3, amsgrad=True)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_optimizer_matches_torch(case):
    ours, theirs = CASES[case]
    data = _problem()
    for (W, b), (Wt, bt) in zip(_gc_run(ours(), data), _torch_run(theirs, data)):
        np.testing.assert_allclose(W, Wt, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(b, bt, rtol=1e-6, atol=1e-12)


def test_clipping_inside_the_step_matches_clip_grad_norm():
    data = _problem(1)
    ours = _gc_run(optim.SGD(lr=0.1, momentum=0.9, clip_norm=0.5), data)
    theirs = _torch_run(lambda p: TO.SGD(p, lr=0.1, momentum=0.9), data, clip=0.5)
    for (W, b), (Wt, bt) in zip(ours, theirs):
        np.testing.assert_allclose(W, Wt, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(b, bt, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("max_norm", [0.3, 100.0])
def test_clip_by_global_norm(max_norm):
    rng = np.random.default_rng(2)
    g1, g2 = rng.normal(size=(3, 4)), rng.normal(size=5)
    a, b = gc.input("a", (3, 4), "float64"), gc.input("b", (5,), "float64")
    clipped, norm = optim.clip_by_global_norm([a, b], max_norm)
    c1, c2, n = gc.compile([*clipped, norm], backend="numpy")(a=g1, b=g2)
    t1, t2 = torch.zeros(3, 4, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    t1.grad, t2.grad = torch.tensor(g1), torch.tensor(g2)
    total = torch.nn.utils.clip_grad_norm_([t1, t2], max_norm)
    np.testing.assert_allclose(n, total.item(), rtol=1e-12)
    np.testing.assert_allclose(c1, t1.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(c2, t2.grad.numpy(), rtol=1e-12)
    assert np.sqrt((c1**2).sum() + (c2**2).sum()) <= max_norm * (1 + 1e-9)


def test_schedule_feeds_the_step_like_a_torch_scheduler():
    data = _problem(3)
    ours = _gc_run(optim.Adam(lr=optim.cosine(0.05, 4, min_lr=0.001)), data, steps=6)
    theirs = _torch_run(lambda p: TO.Adam(p, lr=0.05), data, steps=6, scheduler=lambda o:
                        TO.lr_scheduler.CosineAnnealingLR(o, T_max=4, eta_min=0.001))
    for (W, _), (Wt, _) in list(zip(ours, theirs))[:4]:  # torch's cosine climbs after T_max
        np.testing.assert_allclose(W, Wt, rtol=1e-6, atol=1e-12)


def _torch_lrs(make_sched, steps):
    p = torch.zeros(1, requires_grad=True)
    opt = TO.SGD([p], lr=0.1)
    sched = make_sched(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


SCHEDULES = {
    "step": (optim.step_decay(0.1, 3, gamma=0.5),
             lambda o: TO.lr_scheduler.StepLR(o, step_size=3, gamma=0.5)),
    "exponential": (optim.exponential(0.1, 0.9),
                    lambda o: TO.lr_scheduler.ExponentialLR(o, gamma=0.9)),
    "cosine": (optim.cosine(0.1, 10, min_lr=0.01),
               lambda o: TO.lr_scheduler.CosineAnnealingLR(o, T_max=10, eta_min=0.01)),
    "warmup": (optim.warmup(0.1, 4, start_factor=0.25),
               lambda o: TO.lr_scheduler.LinearLR(o, start_factor=0.25, total_iters=4)),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedules_match_torch(name):
    ours, theirs = SCHEDULES[name]
    expected = _torch_lrs(theirs, 11)
    np.testing.assert_allclose([ours(k) for k in range(11)], expected, rtol=1e-9)


def test_schedule_details():
    assert optim.constant(0.3)(100) == 0.3
    cos = optim.cosine(1.0, 10, 0.1)
    assert cos(10) == pytest.approx(0.1) and cos(50) == pytest.approx(0.1)  # stays at min
    warm = optim.warmup(optim.cosine(1.0, 10), 2)
    assert warm(0) == 0.0 and warm(1) == pytest.approx(0.5 * optim.cosine(1.0, 10)(1))
    assert warm(5) == optim.cosine(1.0, 10)(5)


def test_update_graph_names_and_initial_state():
    W = gc.param("W_opt", (2, 3))
    loss = gc.sum(gc.square(W))
    upd = optim.AdaGrad(lr=0.1, initial_accumulator_value=0.5).build([W], [gc.grad(loss, W)])
    assert list(upd.slots) == ["opt_sum_W_opt"] and upd.lr.name == optim.LR_INPUT
    assert upd.lr.dtype == "float32" and upd.new_params["W_opt"].dtype == "float32"
    init = optim.AdaGrad(initial_accumulator_value=0.5).initial_state([W])
    assert init["opt_sum_W_opt"].dtype == np.float32 and (init["opt_sum_W_opt"] == 0.5).all()
    assert optim.SGD(lr=0.1).slots == () and optim.SGD(momentum=0.9).slots == ("momentum",)
    assert "momentum=0.9" in repr(optim.SGD(momentum=0.9))


def test_optimizer_errors():
    with pytest.raises(gc.GraphError, match="Nesterov"):
        optim.SGD(lr=0.1, nesterov=True)
    with pytest.raises(gc.GraphError, match="lr"):
        optim.Adam(lr=-1.0)
    with pytest.raises(gc.GraphError, match="clip_norm"):
        optim.Adam(clip_norm=0)
    x = gc.input("not_a_param", (2,))
    with pytest.raises(gc.GraphError, match="gc.param"):
        optim.SGD().build([x], [x])
    with pytest.raises(gc.GraphError, match="no parameters"):
        optim.SGD().build([], [])


def test_update_is_part_of_one_compiled_step():
    W = gc.param("W_fused", (3,), dtype="float64")
    loss = gc.sum(gc.square(W - 1.0))
    step = make_train_step(loss, optim.Adam(lr=0.1), backend="numpy")
    names = set(step.fn.input_names)
    assert {"W_fused", "opt_m_W_fused", "opt_v_W_fused", "opt_lr", "opt_t"} == names
    assert len(step.fn.graph.outputs) == 1 + 1 + 2  # loss, new W, new m and v
    for _ in range(200):
        step()
    np.testing.assert_allclose(step.params["W_fused"], 1.0, atol=1e-3)


@pytest.mark.parametrize("lr", [np.float32(0.01), np.int64(1), np.array(0.01)])
def test_a_numpy_scalar_learning_rate_is_a_number(lr):
    assert optim.SGD(lr=lr).lr == float(lr)


@pytest.mark.parametrize("make", [lambda: optim.warmup(0.1, 0), lambda: optim.cosine(0.1, 0),
                                  lambda: optim.step_decay(0.1, 0)])
def test_schedules_of_no_steps_are_refused_when_built(make):
    with pytest.raises(gc.GraphError, match="must be an int of at least 1"):
        make()
