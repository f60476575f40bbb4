"""L-BFGS whose scalars stay on the tensors' device.

``torch.optim.LBFGS`` reads its loss, step size and curvature test on the
host (``float(loss)``, ``if ys > 1e-10``, ``alpha=al[i]``), a synchronisation
each, several per iteration: on a GPU every iteration then waits for the
previous one to finish. This one keeps every scalar a 0-d device tensor and
makes the curvature test a mask, so the host only queues work.

It follows ``torch.optim.LBFGS(lr=lr, history_size=m, line_search_fn=None,
tolerance_grad=-1, tolerance_change=-1)`` run for ``max_iter = max_eval =
evaluations``: the same evaluations, directions and step sizes (tested against
it on the CPU in float64). One difference, by design: where torch skips a
curvature pair with ``yᵀs ≤ 1e-10`` (it would break positive definiteness), this
one stores it with weight 0, so it contributes nothing but, once the history is
full, pushes out the oldest pair one iteration early. Such pairs do not occur
on a smooth objective like style transfer's.

One option departs from torch: ``first_step_rms`` sizes the first step (along
-g) so that it moves the parameter by that root-mean-square amount, instead of
torch's ``min(1, 1/‖g‖₁)``. On an image, torch's first step moves each pixel by
about ``1/numel`` (1e-6 at 512 px), far below the rounding of a bfloat16
gradient, so the first curvature pair is rounding noise and L-BFGS spends two to
three more evaluations before it moves (BENCHMARKS.md, "A good picture, fast").

Another, ``max_step_rms``, bounds every step: with no line search, a pair of
little curvature can send the next step far past anything the loss has seen (on
a picture, most pixels past 0 or 1, where the clamped loss gives them no
gradient, and the run never comes back: BENCHMARKS.md, "L-BFGS's longest step").
"""

from typing import Callable, Optional, Sequence, Tuple

import torch

CURVATURE_THRESHOLD = 1e-10  # torch.optim.LBFGS's


def _dot(stored: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """stored · vector in the vector's dtype (a narrower stored vector is widened, one at a time)."""
    return (stored if stored.dtype == vector.dtype else stored.to(vector.dtype)).dot(vector)


class LBFGS:
    """Minimises a function of one tensor in place.

    param: the tensor optimised, a contiguous leaf with ``requires_grad``, any
    shape, a floating dtype; its history is ``2 · history_size · param.numel()`` values
    of ``history_dtype`` (default: the parameter's) on its device, allocated up front.
    A narrower ``history_dtype`` (bfloat16: half the memory of float32) stores the
    pairs rounded; the curvature ``1/yᵀs`` is taken before rounding and the
    recursion's vectors and dot products stay in the parameter's dtype.
    ``first_step_rms``: None for torch's first step, else the root-mean-square
    change of the first step (in the parameter's units; ``lr`` scales the later
    steps only). ``max_step_rms``: None, or the largest root-mean-square change
    of any step; a longer one is shortened along its direction (the pair stored
    is the step taken).
    """

    def __init__(
        self,
        param: torch.Tensor,
        lr: float = 1.0,
        history_size: int = 100,
        first_step_rms: Optional[float] = None,
        history_dtype: Optional[torch.dtype] = None,
        max_step_rms: Optional[float] = None,
    ):
        if not param.requires_grad or not param.is_contiguous():
            raise ValueError("LBFGS needs a contiguous parameter with requires_grad=True")
        if history_size < 1:
            raise ValueError(f"history_size must be at least 1, got {history_size}")
        for name, value in (("first_step_rms", first_step_rms), ("max_step_rms", max_step_rms)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self.param, self.lr, self.history_size = param, float(lr), int(history_size)
        self.first_step_rms, self.max_step_rms = first_step_rms, max_step_rms
        size, stored = param.numel(), history_dtype or param.dtype
        self.steps = torch.zeros(history_size, size, dtype=stored, device=param.device)  # s = x_{k+1} - x_k
        self.grad_changes = torch.zeros(history_size, size, dtype=stored, device=param.device)  # y = g_{k+1} - g_k
        # 1 / yᵀs, or 0 for a skipped pair
        self.rho = torch.zeros(history_size, dtype=param.dtype, device=param.device)
        self.pairs_pushed = 0  # a host count: the ring's order
        self.evaluations = 0
        # s of the newest update; g before it; the scale of the initial inverse Hessian
        self.last_step: Optional[torch.Tensor] = None
        self.previous_grad: Optional[torch.Tensor] = None
        self.h_diag: Optional[torch.Tensor] = None

    def _gradient(self) -> torch.Tensor:
        if self.param.grad is None:
            raise RuntimeError("the closure must compute the gradient (call backward) before returning")
        return self.param.grad.reshape(-1)

    def _store(self, slot: int, step: torch.Tensor, change: torch.Tensor) -> None:
        """Keeps the pair (s, y) in the ring's `slot`, in the history's dtype."""
        self.steps[slot].copy_(step)
        self.grad_changes[slot].copy_(change)

    def _direction(self, grad: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The two-loop recursion over the stored pairs, newest first; also stores the newest pair.
        Works in the buffers it is handed, so a step holds four picture-sized vectors (the
        parameter, its gradient, the previous gradient, the last step) besides the history: y is
        made in the previous gradient's buffer (refilled with the gradient after), and the
        recursion's vector in the last step's (stored first)."""
        previous_grad, step = self.previous_grad, self.last_step
        if previous_grad is None or step is None or self.h_diag is None:
            raise RuntimeError("the two-loop recursion runs only after a first step")
        change = previous_grad.neg_().add_(grad)  # y = g - g_prev, exactly as a subtraction rounds
        curvature = change.dot(step)
        accepted = curvature > CURVATURE_THRESHOLD
        slot = self.pairs_pushed % self.history_size
        self.pairs_pushed += 1
        self._store(slot, step, change)
        self.rho[slot] = torch.where(accepted, 1.0 / curvature, torch.zeros_like(curvature))
        h_diag = torch.where(accepted, curvature / change.dot(change), self.h_diag)

        stored = min(self.pairs_pushed, self.history_size)
        newest_first = [(self.pairs_pushed - 1 - i) % self.history_size for i in range(stored)]
        q = step.copy_(grad).neg_()
        alphas = {}
        # addcmul_ with a 0-d factor: one pass over the history vectors, no temporary (at
        # 512 px each is 3 MiB, 2 · 50 of them per step).
        for index in newest_first:
            alphas[index] = _dot(self.steps[index], q) * self.rho[index]
            q.addcmul_(self.grad_changes[index], alphas[index], value=-1)
        r = q.mul_(h_diag)
        for index in reversed(newest_first):
            beta = _dot(self.grad_changes[index], r) * self.rho[index]
            r.addcmul_(self.steps[index], alphas[index] - beta)
        return r, h_diag

    def step(self, closure: Callable[[], torch.Tensor]) -> None:
        """One evaluation of `closure`, preceded by an update of the parameter from the last
        evaluation's gradient (none before the first evaluation). The closure computes the loss at
        the current parameter, fills ``param.grad`` and returns the loss."""
        step_together([self], closure)

    def run(self, closure: Callable[[], torch.Tensor], evaluations: int) -> None:
        """`evaluations` steps: ``evaluations - 1`` updates, the last evaluation at the final
        parameter, as torch.optim.LBFGS with ``max_iter = max_eval = evaluations``."""
        run_together([self], closure, evaluations)

    def _update(self) -> None:
        grad = self._gradient()
        if self.previous_grad is None:
            direction = grad.neg()
            self.h_diag = torch.ones((), dtype=grad.dtype, device=grad.device)
            if self.first_step_rms is None:  # torch: min(1, 1 / ‖g‖₁) · lr on the first iteration only
                step_size = (1.0 / grad.abs().sum()).clamp(max=1.0) * self.lr
            else:  # a zero gradient gives a zero step (0 · inf would be NaN)
                rms = grad.square().mean().sqrt()
                step_size = torch.where(rms > 0, self.first_step_rms / rms, torch.zeros_like(rms))
            self.previous_grad = grad.clone()
        else:
            direction, self.h_diag = self._direction(grad)
            self.previous_grad.copy_(grad)
            step_size = torch.full((), self.lr, dtype=grad.dtype, device=grad.device)
        # s = d · t, in the direction's buffer: the step taken now and the next pair's s.
        step = self.last_step = direction.mul_(step_size)
        if self.max_step_rms is not None:  # a zero step stays zero: inf clamped to 1
            rms = (step.dot(step) / step.numel()).sqrt()
            step.mul_((self.max_step_rms / rms).clamp(max=1.0))
        with torch.no_grad():
            self.param.view(-1).add_(step)


def step_together(optimizers: Sequence[LBFGS], closure: Callable[[], torch.Tensor]) -> None:
    """One step of several L-BFGS, each over its own tensor, with one `closure` that evaluates
    them all and fills every parameter's ``grad`` (a batch of pictures through VGG at once). Each
    keeps its own history and step sizes and never reads the loss, so each follows the iterates it
    would follow alone, given the same gradients."""
    for optimizer in optimizers:
        if optimizer.evaluations > 0:
            optimizer._update()
    with torch.enable_grad():
        closure()
    for optimizer in optimizers:
        optimizer.evaluations += 1


def run_together(optimizers: Sequence[LBFGS], closure: Callable[[], torch.Tensor], evaluations: int) -> None:
    """`evaluations` steps of :func:`step_together`."""
    for _ in range(evaluations):
        step_together(optimizers, closure)
