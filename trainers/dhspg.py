"""DHSPG (OTOv2's dual half-space projected gradient): train while driving whole ZIGs to 0.

Each step computes a plain direction d (SGD or Adam) for every parameter. After warm-up, every
``period`` steps the ZIGs with the lowest salience join the redundant set. Important ZIGs and
ungrouped parameters take x -= lr * d. Redundant ZIGs take x -= lr * (d + lam_g * x / ||x||),
then a half-space projection sets a ZIG exactly to 0 once the step leaves the half-space
{y : <y, x> >= epsilon * ||x||^2}. All per-ZIG work is vectorized through ``ZigIndex``.
Deterministic on CPU; on CUDA enable ``torch.use_deterministic_algorithms`` (index_add_).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from trainers.zig import ZigIndex

__all__ = ["DHSPG", "DHSPGOptions", "redundant_lambdas", "salience"]

# A redundant ZIG that kept this share of its norm over a period is stalled (the descent bound
# caps its push when its gradient is tiny): it competes on salience again.
STALLED = 0.9
_VARIANT_DEFAULTS = {  # lam, lam_amplify, lam_hat (OTOv2's published settings)
    "sgd": (1e-3, 2.0, 10.0),
    "adam": (1e-2, 20.0, 1e3),
}


@dataclass
class DHSPGOptions:
    """DHSPG settings. lam, lam_amplify and lam_hat default per variant (sgd 1e-3, 2, 10;
    adam 1e-2, 20, 1e3). ``epsilon`` is the half-space threshold in [0, 0.95]; ``period`` is the
    number of steps between choices of the redundant set. ``compile_stats`` computes the per-step
    sums <x,x>, <x,d>, <d,d> with one torch.compile'd pass (see
    ``benchmarks/optimizer_overhead.py``: they are most of DHSPG's cost over SGD; ~25 s to compile).

    Why a chosen ZIG stays redundant while its push works: OTOv2 re-partitions every period, but a
    ZIG under push looks important to the salience (the loss resists it, so cos(x, -d) rises) and
    was released half-shrunk. On DemoNet (Fashion-MNIST 12k x 6 epochs, target 0.6) every
    surviving conv2/conv3 channel then had a BN gamma near 0.08 (1.0 in the baseline), and top-1
    was 75.3 % with re-partitioning against 77.4 % with a fixed set (24k x 8 epochs: 79.5 % against
    84.2 %). Only a ZIG that kept at least ``STALLED`` (90 %) of its norm over a period (its push
    capped by the descent bound) competes again, so a tiny gradient cannot hold a slot forever.
    ``reselect`` restores OTOv2's behaviour.

    Tuning: a redundant ZIG the loss resists shrinks by about lr * (lam_g - L) per step; with
    ``reselect``, give ``period`` enough steps for it to reach 0 (re-selecting every 10 steps
    left an MLP at 0.32 instead of 0.5 sparsity); epsilon > 0 projects earlier.
    Defaults: lr 0.1, sgd, no momentum or decay, target 0.5, epsilon 0, no warm-up, period 100,
    no reselect, seed 0."""

    lr: float = 0.1
    variant: str = "sgd"
    momentum: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    target_group_sparsity: float = 0.5
    epsilon: float = 0.0
    lam: float | None = None
    lam_amplify: float | None = None
    lam_hat: float | None = None
    warmup_steps: int = 0
    period: int = 100
    reselect: bool = False
    seed: int = 0
    compile_stats: bool = False

    def __post_init__(self) -> None:
        if self.variant not in _VARIANT_DEFAULTS:
            raise ValueError(f"variant {self.variant!r}: choose from {list(_VARIANT_DEFAULTS)}")
        lam, amplify, hat = _VARIANT_DEFAULTS[self.variant]
        self.lam = lam if self.lam is None else self.lam
        self.lam_amplify = amplify if self.lam_amplify is None else self.lam_amplify
        self.lam_hat = hat if self.lam_hat is None else self.lam_hat
        self.betas = tuple(self.betas)
        checks = {
            "lr": self.lr >= 0,
            "target_group_sparsity": 0 <= self.target_group_sparsity < 1,
            "epsilon": 0 <= self.epsilon <= 0.95,
            "lam": self.lam >= 0,
            "lam_amplify": self.lam_amplify >= 1,
            "lam_hat": self.lam_hat >= 1,
            "period": self.period >= 1,
            "warmup_steps": self.warmup_steps >= 0,
            "momentum": 0 <= self.momentum < 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"DHSPGOptions: out of range: {', '.join(bad)}")


def redundant_lambdas(
    xx: torch.Tensor, xd: torch.Tensor, dd: torch.Tensor, *, lam: float, amplify: float,
    hat: float,
) -> torch.Tensor:
    """Per-ZIG lam_g for the redundant step s = d + lam_g * x/||x|| (the update is x -= lr*s).

    Descent needs <s, d> > 0: ||d||^2 + lam_g <x,d>/||x|| > 0, so if <x,d> < 0,
    lam_g < U = ||d||^2 ||x|| / -<x,d>. Shrinking ||x|| needs <s, x> > 0: lam_g > L = -<x,d>/||x||.
    L < U by Cauchy-Schwarz unless x and d are parallel. We take amplify * L clipped into
    [lam, lam * hat], and the midpoint (L + U) / 2 if that lands outside (L, U); lam if <x,d> >= 0.
    """
    norm = xx.sqrt().clamp_min(torch.finfo(xx.dtype).tiny)
    lower = (-xd / norm).clamp_min(0)
    upper = torch.where(xd < 0, dd * norm / (-xd).clamp_min(torch.finfo(xx.dtype).tiny),
                        torch.full_like(xx, math.inf))
    candidate = (amplify * lower).clamp(lam, lam * hat)
    inside = (candidate > lower) & (candidate < upper)
    return torch.where(inside, candidate, (lower + upper) / 2)


def salience(xx: torch.Tensor, xd: torch.Tensor, dd: torch.Tensor,
             sizes: torch.Tensor) -> torch.Tensor:
    """Per-ZIG importance: 1/2 cos(x, -d) + 1/2 ||x||/size, each min-max normalized over the
    non-zero ZIGs; zero ZIGs get -inf (always redundant).

    cos(x, -d) is high when the descent step grows the ZIG (the loss wants it), low when the
    step already shrinks it (the loss does not resist its removal): low means redundant.
    """
    tiny = torch.finfo(xx.dtype).tiny
    norm, dnorm = xx.sqrt(), dd.sqrt()
    cos = -xd / (norm * dnorm).clamp_min(tiny)
    live = xx > 0
    score = 0.5 * _min_max(cos, live) + 0.5 * _min_max(norm / sizes, live)
    return score.masked_fill(~live, -math.inf)


def _min_max(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    lo = torch.where(valid, values, math.inf).min()
    hi = torch.where(valid, values, -math.inf).max()
    return (values - lo) / (hi - lo).clamp_min(torch.finfo(values.dtype).eps)


class DHSPG(torch.optim.Optimizer):
    """OTOv2 DHSPG over named parameters; ZIGs come from ``build_zig_index`` on the same tensors.

    One param group; its ``lr`` is read each step, so LR schedulers work. Parameters without a
    gradient are skipped, except ZIG parameters, which then count a zero gradient.
    """

    def __init__(
        self,
        params: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
        zig: ZigIndex,
        options: DHSPGOptions | None = None,
    ) -> None:
        named = dict(params.items() if isinstance(params, Mapping) else params)
        self.options = options or DHSPGOptions()
        opt = self.options
        super().__init__(list(named.values()), dict(lr=opt.lr))
        self.named = named
        self.zig = zig
        for entry in zig.entries:
            if named.get(entry.name) is not entry.param:
                raise ValueError(f"ZIG parameter '{entry.name}' is not the tensor given to DHSPG; "
                                 f"build the ZigIndex from the same parameters")
        self._entries = {e.name: e for e in zig.entries}
        device = zig.device
        self._sizes = zig.sizes.to(torch.float32) if zig.num_groups else None
        generator = torch.Generator().manual_seed(opt.seed)
        self._tiebreak = torch.randperm(zig.num_groups, generator=generator).to(device)
        self._t = 0
        self._redundant = torch.zeros(zig.num_groups, dtype=torch.bool, device=device)
        self._zeroed = torch.zeros_like(self._redundant)
        self._lam = torch.zeros(zig.num_groups, device=device)
        self._chosen_norm = torch.zeros(zig.num_groups, device=device)

    # ------------------------------------------------------------------ direction

    def _direction(self, name: str, p: torch.Tensor,
                   keep: torch.Tensor | float) -> torch.Tensor | None:
        """Plain SGD (momentum, L2 decay) or bias-corrected Adam direction; the step is -lr*d.

        The running state of ZIGs projected to zero restarts every step (its decay is 0 there),
        so it never accumulates behind a zero group."""
        opt = self.options
        grad = p.grad
        if grad is None:
            if name not in self._entries:
                return None
            grad = torch.zeros_like(p)
        if opt.weight_decay:
            grad = grad.add(p, alpha=opt.weight_decay)
        state = self.state[p]
        if opt.variant == "adam":
            return self._adam(state, grad, keep)
        if not opt.momentum:
            return grad
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = grad.clone()
        else:
            state["momentum_buffer"].mul_(opt.momentum * keep).add_(grad)
        return state["momentum_buffer"]

    def _adam(self, state: dict, grad: torch.Tensor, keep: torch.Tensor | float) -> torch.Tensor:
        beta1, beta2 = self.options.betas
        if "exp_avg" not in state:
            state.update(step=0, exp_avg=torch.zeros_like(grad),
                         exp_avg_sq=torch.zeros_like(grad))
        state["step"] += 1
        state["exp_avg"].mul_(beta1 * keep).add_(grad, alpha=1 - beta1)
        state["exp_avg_sq"].mul_(beta2 * keep).addcmul_(grad, grad, value=1 - beta2)
        m_hat = state["exp_avg"] / (1 - beta1 ** state["step"])
        v_hat = state["exp_avg_sq"] / (1 - beta2 ** state["step"])
        return m_hat / (v_hat.sqrt() + self.options.eps)

    # ------------------------------------------------------------------ step

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One DHSPG step; returns the closure's loss if one is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        lr, opt = self.param_groups[0]["lr"], self.options
        stateful = opt.variant == "adam" or opt.momentum
        keeps = (self.zig.broadcast((~self._zeroed).float(), 1.0)
                 if stateful and not self.in_warmup else {})
        directions = {}
        for name, p in self.named.items():
            d = self._direction(name, p, keeps.get(name, 1.0))
            if d is not None:
                directions[name] = d
        if self.in_warmup or self.zig.num_groups == 0:
            names = list(directions)
            torch._foreach_add_([self.named[n] for n in names],
                                [directions[n] for n in names], alpha=-lr)
        else:
            self._sparse_step(directions, lr)
        self._t += 1
        return loss

    @property
    def in_warmup(self) -> bool:
        return self._t < self.options.warmup_steps

    def _sparse_step(self, directions: dict[str, torch.Tensor], lr: float) -> None:
        zig, opt = self.zig, self.options
        selecting = (self._t - opt.warmup_steps) % opt.period == 0
        if selecting or bool((self._redundant & ~self._zeroed).any()):
            xx, xd, dd = zig.pair_stats(zig.params(), directions, compiled=opt.compile_stats)
        else:
            # Between choices only redundant ZIGs' sums are read, and every redundant ZIG was
            # projected last step, so is exactly 0 (only this optimizer writes the parameters
            # between steps): their sums are 0. This skips the sweep for most of a run.
            xx = xd = dd = torch.zeros(zig.num_groups, device=zig.device)
        if selecting:
            self._redundant = self._select(xx, xd, dd)
        lam = redundant_lambdas(xx, xd, dd, lam=opt.lam, amplify=opt.lam_amplify,
                                hat=opt.lam_hat)
        self._lam = torch.where(self._redundant, lam, 0)
        norm = xx.sqrt()
        push = torch.where(norm > 0, self._lam / norm.clamp_min(1e-30), 0)
        # x^ = (1 - lr*push) x - lr d, so <x^, x> = (1 - lr*push) xx - lr xd: no extra pass
        kept = (1 - lr * push) * xx - lr * xd
        project = self._redundant & ((kept < opt.epsilon * xx) | (xx == 0))
        self._write(directions, 1 - lr * push, project, lr)

    def _select(self, xx: torch.Tensor, xd: torch.Tensor, dd: torch.Tensor) -> torch.Tensor:
        """Redundant set: the floor(K * target) lowest-salience ZIGs, plus every zero ZIG and,
        unless ``reselect``, every redundant ZIG whose push is working (see DHSPGOptions)."""
        norm = xx.sqrt()
        chosen = xx == 0
        if not self.options.reselect:
            chosen |= self._redundant & (norm < STALLED * self._chosen_norm)
        self._chosen_norm = norm
        score = salience(xx, xd, dd, self._sizes).masked_fill(chosen, -math.inf)
        count = max(math.floor(self.zig.num_groups * self.options.target_group_sparsity),
                    int(chosen.sum()))
        order = torch.argsort(score[self._tiebreak], stable=True)
        redundant = torch.zeros_like(self._redundant)
        redundant[self._tiebreak[order[:count]]] = True
        return redundant

    def _write(self, directions: dict[str, torch.Tensor], shrink: torch.Tensor,
               project: torch.Tensor, lr: float) -> None:
        """x <- shrink[zig] * x - lr * keep[zig] * d, keep = 0 where projected: with factor 0 on
        x too, a projected ZIG is exactly 0 (for a finite d).

        Multi-tensor (``_foreach``) updates. The keep mask rides in the add (addcmul costs what
        add does), and only parameters with a shrinking or newly projected row are touched a
        second time (a ZIG projected last step is 0 already): the step stays close to SGD's
        memory traffic. Once the redundant set is 0, it is the plain step with those rows at 0."""
        factor = shrink.masked_fill(project & ~self._zeroed, 0)
        scaled, projected = self.zig.touched(factor != 1, project)
        if scaled:
            factors = self.zig.broadcast(factor, 1.0, scaled)
            torch._foreach_mul_([e.param for e in scaled], [factors[e.name] for e in scaled])
        masked = {e.name for e in projected}
        plain = [n for n in directions if n not in masked]
        torch._foreach_add_([self.named[n] for n in plain], [directions[n] for n in plain],
                            alpha=-lr)
        if masked:  # -lr folded into the mask: x + d * (-lr) rounds as add's x + (-lr) * d
            steps = self.zig.broadcast((~project).to(factor.dtype) * -lr, -lr, projected)
            torch._foreach_addcmul_([self.named[n] for n in masked],
                                    [directions[n] for n in masked],
                                    [steps[n] for n in masked])
        self._zeroed = project

    # ------------------------------------------------------------------ reporting and resume

    @torch.no_grad()
    def diagnostics(self) -> dict[str, Any]:
        """Numbers to log per epoch, so 'sparsity does not rise' can be traced to its cause.

        ``redundant_live`` counts redundant ZIGs not yet zero; with their mean norm and mean lam
        it tells a stalled push (lam ~ base, norms flat) from a slow one (norms falling)."""
        zig = self.zig
        norms = zig.group_sq_norms().sqrt() if zig.num_groups else torch.zeros(0)
        redundant = self._redundant
        live = redundant & (norms > 0)
        return {
            "step": self._t,
            "in_warmup": self.in_warmup,
            "num_zigs": zig.num_groups,
            "target_group_sparsity": self.options.target_group_sparsity,
            "redundant_count": int(redundant.sum()),
            "redundant_live": int(live.sum()),
            "group_sparsity": zig.zero_fraction(),
            "redundant_mean_norm": _mean(norms[redundant]),
            "important_mean_norm": _mean(norms[~redundant]),
            "mean_lam": _mean(self._lam[live]),
        }

    def state_dict(self) -> dict[str, Any]:
        """torch's optimizer state plus DHSPG's step count, redundant set and last lambdas."""
        out = super().state_dict()
        out["dhspg"] = {"step": self._t, "redundant": self._redundant.clone(),
                        "zeroed": self._zeroed.clone(),
                        "lam": self._lam.clone(), "chosen_norm": self._chosen_norm.clone(),
                        "options": asdict(self.options)}
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a ``state_dict()``; the next step is then identical to the saved run's."""
        state = dict(state_dict)
        extra = state.pop("dhspg")
        super().load_state_dict(state)
        for param, slots in self.state.items():
            for key, value in slots.items():  # torch checks group sizes, not buffer shapes
                if torch.is_tensor(value) and value.dim() and value.shape != param.shape:
                    raise ValueError(f"optimizer '{key}' buffer is {tuple(value.shape)} for a "
                                     f"parameter of {tuple(param.shape)}")
        for key in ("redundant", "zeroed", "lam", "chosen_norm"):
            if extra[key].shape != self._redundant.shape:
                raise ValueError(f"dhspg '{key}' has {tuple(extra[key].shape)} entries for "
                                 f"{self._redundant.numel()} groups")
        device = self._redundant.device
        self._t = int(extra["step"])
        self._redundant = extra["redundant"].to(device=device, dtype=torch.bool)
        self._zeroed = extra["zeroed"].to(device=device, dtype=torch.bool)
        self._lam = extra["lam"].to(device)
        self._chosen_norm = extra["chosen_norm"].to(device)


def _mean(values: torch.Tensor) -> float:
    return float(values.mean()) if values.numel() else 0.0
