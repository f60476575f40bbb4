"""nst_ext's device-side L-BFGS against torch.optim.LBFGS (no line search), in float64."""

import subprocess
import sys

import pytest
import torch

from nst_ext.plan import memory
from nst_ext.lbfgs import CURVATURE_THRESHOLD, LBFGS, run_together


def make_problem(seed, size=(3, 7, 5)):
    """A smooth, non-quadratic function of a tensor, with a fresh random instance per seed."""
    generator = torch.Generator().manual_seed(seed)
    n = torch.Size(size).numel()
    matrix = torch.randn(n, n, generator=generator, dtype=torch.float64) / n**0.5
    target = torch.randn(n, generator=generator, dtype=torch.float64)
    start = torch.randn(size, generator=generator, dtype=torch.float64)

    def loss_of(x):
        flat = x.reshape(-1)
        return (matrix @ flat - target).square().sum() + 0.1 * flat.pow(4).sum() + flat.sin().sum()

    return start, loss_of


def run_with(optimizer_class, start, loss_of, evaluations, history_size, **options):
    """(losses, points, optimizer) of `evaluations` evaluations from `start`."""
    x = start.clone().requires_grad_(True)
    losses, points = [], []

    def closure():
        x.grad = None
        loss = loss_of(x)
        loss.backward()
        losses.append(loss.detach().clone())
        points.append(x.detach().clone())
        return loss

    optimizer = optimizer_class(x, history_size=history_size, **options)
    optimizer.run(closure, evaluations)
    return torch.stack(losses), torch.stack(points), optimizer


def run_ours(start, loss_of, evaluations, history_size, lr=1.0, first_step_rms=None):
    losses, points, _ = run_with(LBFGS, start, loss_of, evaluations, history_size, lr=lr, first_step_rms=first_step_rms)
    return losses, points


def run_torch(start, loss_of, evaluations, history_size, lr=1.0):
    x = start.clone().requires_grad_(True)
    losses, points = [], []
    optimizer = torch.optim.LBFGS(
        [x],
        lr=lr,
        max_iter=evaluations,
        max_eval=evaluations,
        history_size=history_size,
        tolerance_grad=-1.0,
        tolerance_change=-1.0,
    )

    def closure():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of(x)
        loss.backward()
        losses.append(loss.detach().clone())
        points.append(x.detach().clone())
        return loss

    optimizer.step(closure)
    return torch.stack(losses), torch.stack(points)


def shared_iterates(points, loss_of):
    """How many of the iterates `points` ``(N, ...)`` torch's L-BFGS must share with ours: all of
    them, unless a curvature pair yᵀs falls to CURVATURE_THRESHOLD or below (near the minimum),
    which torch skips and ours stores with weight 0, pushing out its oldest pair (the module's
    docstring): then those up to the evaluation that made that pair."""
    gradients = []
    for point in points:
        probe = point.clone().requires_grad_(True)
        loss_of(probe).backward()
        gradients.append(probe.grad.reshape(-1))
    for k in range(len(points) - 1):
        step, change = (points[k + 1] - points[k]).reshape(-1), gradients[k + 1] - gradients[k]
        if change.dot(step) <= CURVATURE_THRESHOLD:
            return k + 2
    return len(points)


@pytest.mark.parametrize("history_size,evaluations,lr", [(5, 30, 1.0), (100, 25, 1.0), (3, 40, 0.5)])
def test_same_iterates_as_torch_lbfgs(seed, history_size, evaluations, lr):
    start, loss_of = make_problem(seed)
    ours = run_ours(start, loss_of, evaluations, history_size, lr)
    theirs = run_torch(start, loss_of, evaluations, history_size, lr)
    assert len(ours[0]) == len(theirs[0]) == evaluations
    shared = shared_iterates(ours[1], loss_of)
    assert shared >= evaluations // 2, shared
    for mine, torchs in zip(ours, theirs):
        torch.testing.assert_close(
            mine[:shared], torchs[:shared], rtol=1e-9, atol=1e-9, msg=lambda m: f"{m} (seed {seed})"
        )
    assert ours[0][-1] < ours[0][0]


def test_one_evaluation_changes_nothing(seed):
    start, loss_of = make_problem(seed)
    losses, points = run_ours(start, loss_of, 1, 5)
    assert len(losses) == 1 and torch.equal(points[0], start)


def test_a_pair_without_curvature_is_skipped(seed):
    """On a linear function yᵀs = 0: no pair may enter the history (torch skips them too),
    so every direction stays the steepest descent -g."""
    x = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    slope = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    points = []

    def closure():
        x.grad = None
        loss = (slope * x).sum()
        loss.backward()
        points.append(x.detach().clone())
        return loss

    optimizer = LBFGS(x, lr=0.1, history_size=3)
    optimizer.run(closure, 6)
    assert torch.all(optimizer.rho == 0)
    steps = torch.diff(torch.stack(points), dim=0)
    torch.testing.assert_close(steps[1:], (-0.1 * slope).expand(4, 4))


def test_needs_a_gradient():
    with pytest.raises(ValueError, match="contiguous parameter with requires_grad"):
        LBFGS(torch.zeros(3))
    x = torch.zeros(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="must compute the gradient"):
        LBFGS(x).run(lambda: x.sum(), 2)


def test_several_driven_together_follow_their_own_iterates(seed):
    """Two optimisers stepped by one closure (a batch of pictures) take the iterates each takes alone."""
    problems = [make_problem(seed), make_problem(seed + 1000, size=(2, 9))]
    alone = [run_ours(start, loss_of, 20, 5)[1] for start, loss_of in problems]
    xs = [start.clone().requires_grad_(True) for start, _ in problems]
    points = [[], []]

    def closure():
        total = 0
        for x, (_, loss_of), trace in zip(xs, problems, points):
            x.grad = None
            trace.append(x.detach().clone())
            total = total + loss_of(x)
        total.backward()  # one backward fills both gradients
        return total

    run_together([LBFGS(x, lr=1.0, history_size=5) for x in xs], closure, 20)
    for trace, expected in zip(points, alone):
        torch.testing.assert_close(torch.stack(trace), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("first_step_rms", [1e-3, 0.05])
def test_first_step_of_a_set_size(seed, first_step_rms):
    """With first_step_rms the first update is -g scaled to that root-mean-square change, and the
    later ones are L-BFGS from there: the run still descends."""
    start, loss_of = make_problem(seed, size=(3, 11, 6))
    losses, points = run_ours(start, loss_of, 15, 5, first_step_rms=first_step_rms)
    probe = start.clone().requires_grad_(True)
    loss_of(probe).backward()
    step = points[1] - points[0]
    torch.testing.assert_close(step.square().mean().sqrt(), torch.tensor(first_step_rms, dtype=torch.float64))
    torch.testing.assert_close(step / step.norm(), -probe.grad / probe.grad.norm())
    assert losses[-1] < losses[1] < losses[0]


def test_first_step_at_a_zero_gradient_stays_put():
    x = torch.zeros(5, dtype=torch.float64, requires_grad=True)

    def closure():
        x.grad = None
        loss = x.square().sum()  # minimum at the start: gradient 0
        loss.backward()
        return loss

    LBFGS(x, first_step_rms=0.01).run(closure, 3)
    assert torch.equal(x.detach(), torch.zeros(5, dtype=torch.float64))


def test_first_step_rms_must_be_positive():
    with pytest.raises(ValueError, match="first_step_rms must be positive"):
        LBFGS(torch.zeros(3, requires_grad=True), first_step_rms=0.0)


def test_a_step_longer_than_max_step_rms_is_shortened_along_its_direction(seed):
    """Each step's root-mean-square change is at most max_step_rms, and a longer one keeps its
    direction (the first: -g); the run still descends. A bound above every step changes no
    iterate, bit for bit."""
    start, loss_of = make_problem(seed, size=(3, 11, 6))
    losses, free, _ = run_with(LBFGS, start, loss_of, 15, 5, first_step_rms=0.5)
    steps_rms = (free[1:] - free[:-1]).square().mean(dim=(1, 2, 3)).sqrt()
    bound = min(float(steps_rms.median()), 0.25)  # the first step (0.5) and others longer
    _, loose, _ = run_with(LBFGS, start, loss_of, 15, 5, first_step_rms=0.5, max_step_rms=float(steps_rms.max()) * 2)
    assert torch.equal(loose, free)
    bounded_losses, bounded, _ = run_with(LBFGS, start, loss_of, 15, 5, first_step_rms=0.5, max_step_rms=bound)
    steps = bounded[1:] - bounded[:-1]
    assert (steps.square().mean(dim=(1, 2, 3)).sqrt() <= bound * (1 + 1e-12)).all()
    probe = start.clone().requires_grad_(True)
    loss_of(probe).backward()
    assert steps_rms[0] > bound  # the first step, 0.5, is shortened to the bound along -g
    torch.testing.assert_close(steps[0], -probe.grad * bound / probe.grad.square().mean().sqrt())
    assert bounded_losses[-1] < bounded_losses[0]


def test_max_step_rms_must_be_positive():
    with pytest.raises(ValueError, match="max_step_rms must be positive"):
        LBFGS(torch.zeros(3, requires_grad=True), max_step_rms=-1.0)


class RoundedPairs(LBFGS):
    """The oracle of a narrower history: float64 storage holding each pair rounded to bfloat16, so
    that every product of the recursion is taken in float64 on the rounded values."""

    def _store(self, slot, step, change):
        super()._store(slot, step.to(torch.bfloat16).to(step.dtype), change.to(torch.bfloat16).to(change.dtype))


@pytest.mark.parametrize("history_size", [3, 20])
def test_bfloat16_history_is_the_rounded_pairs_and_half_the_memory(seed, history_size):
    start, loss_of = make_problem(seed)
    losses, points, optimizer = run_with(LBFGS, start, loss_of, 25, history_size, history_dtype=torch.bfloat16)
    oracle_losses, oracle_points, _ = run_with(RoundedPairs, start, loss_of, 25, history_size)
    assert optimizer.steps.dtype == optimizer.grad_changes.dtype == torch.bfloat16
    assert optimizer.rho.dtype == torch.float64 and points.dtype == torch.float64
    assert torch.equal(points, oracle_points) and torch.equal(losses, oracle_losses)
    # The rounding changes the iterates (the test is not vacuous) but not where they go.
    full_losses, full_points = run_ours(start, loss_of, 25, history_size)
    assert not torch.equal(points, full_points)
    progress, full_progress = losses[0] - losses[-1], full_losses[0] - full_losses[-1]
    assert progress > 0.9 * full_progress, (progress, full_progress)


# A child process (a fresh peak of resident memory) running L-BFGS on one large vector with a cheap
# gradient (x - target, written into one kept buffer), printing the step's peak beyond what is held
# before it, in picture-sized vectors.
_PEAK_CHILD = """
import sys, torch
from nst_ext.lbfgs import LBFGS
size, history_dtype = 1 << 23, getattr(torch, sys.argv[1])
def status(field):
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(field))
x = torch.randn(size).requires_grad_(True)
x.grad = torch.zeros(size)
target = torch.randn(size)
def closure():
    with torch.no_grad():
        torch.sub(x, target, out=x.grad)
optimizer = LBFGS(x, history_size=2, history_dtype=history_dtype, first_step_rms=0.1)
optimizer.steps.fill_(1), optimizer.grad_changes.fill_(1)  # the history's pages resident before the baseline
held = status("VmRSS:")
optimizer.run(closure, 6)
print((status("VmHWM:") - held) / (4 * size))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("history_dtype, widened", [("float32", 0), ("bfloat16", 1)])
def test_a_step_holds_two_vectors_besides_the_picture_its_gradient_and_history(history_dtype, widened):
    """Beyond the parameter, its gradient and the pairs, a step holds the previous gradient and the
    last step (y and the recursion's vector are made in their buffers), plus one stored vector
    widened at a time from a narrower history: what nst_ext.plan.memory's LBFGS_WORK_VECTORS counts."""
    completed = subprocess.run(
        [sys.executable, "-c", _PEAK_CHILD, history_dtype], capture_output=True, text=True, check=True
    )
    extra_vectors = float(completed.stdout.strip())
    assert 2 + widened - 0.1 < extra_vectors < 2 + widened + 0.5, extra_vectors
    assert memory.LBFGS_WORK_VECTORS == 4  # the picture, its gradient and these two
