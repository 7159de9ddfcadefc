"""DHSPG (OTOv2's dual half-space projected gradient): train while driving whole ZIGs to 0.

Each step computes a plain direction d (SGD or Adam) for every parameter. After warm-up the
redundant set is chosen once (``select_redundant``). Important ZIGs and ungrouped parameters take
x -= lr * d. Redundant ZIGs take x -= lr * (d + lam_g * x / ||x||), then a half-space projection
sets a ZIG exactly to 0 once the step leaves the half-space {y : <y, x> >= epsilon * ||x||^2}.
When the target group sparsity is reached the push and projection stop: redundant ZIGs not yet
zero go back to plain steps and zero ZIGs stay zero. This follows OTOv2's code
(tianyic/only_train_once at commit 343341c, ``optimizer/dhspg.py``), not the paper's text, where
the two differ. All per-ZIG work is vectorized through ``ZigIndex``. Deterministic on CPU; on
CUDA enable ``torch.use_deterministic_algorithms`` (index_add_).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from trainers.zig import ZigIndex

__all__ = ["COMPILE_MIN_PARAMS", "DHSPG", "DHSPGOptions", "compile_decision", "otov2_score",
           "redundant_lambdas", "salience", "select_redundant"]

# With ``period`` set, a redundant ZIG that kept this share of its norm over a period is stalled
# (the descent bound caps its push when its gradient is tiny): it competes on salience again.
STALLED = 0.9
_VARIANT_DEFAULTS = {  # lam, lam_amplify, lam_hat (OTOv2's hyperparameter.py)
    "sgd": (1e-3, 2.0, 10.0),
    "adam": (1e-2, 20.0, 1e3),
}
SCORES = ("otov2", "salience")
# Below this many parameters a compiled stats pass does not repay its compile time.
COMPILE_MIN_PARAMS = 1_000_000


@dataclass
class DHSPGOptions:
    """DHSPG settings; the defaults are OTOv2's code. lam, lam_amplify and lam_hat default per
    variant (sgd 1e-3, 2, 10; adam 1e-2, 20, 1e3). ``epsilon`` is the half-space threshold in
    [0, 0.95]. The redundant set holds (``target_group_sparsity`` + ``tolerance``) of the ZIGs
    (tolerance 0.05): a few spare candidates, since some resist their push; with ``release``
    (default) the push stops once the target is reached. ``compile_stats`` computes the per-step
    sums <x,x>, <x,d>, <d,d> with one torch.compile'd pass (most of DHSPG's cost over SGD; see
    ``compile_decision``).

    Our extensions, off by default: ``period`` re-chooses the redundant set every ``period``
    steps (OTOv2 chooses it once); a chosen ZIG whose norm still falls keeps its slot, because
    a ZIG under push looks important to a score (the loss resists it) and would be released
    half-shrunk; ``reselect`` re-chooses all of it anyway. ``score`` "salience" is our older
    min-max normalized 1/2 cos(x, -d) + 1/2 ||x||/size (lowest redundant); ``lam_bracket`` also
    takes the midpoint (L + U)/2 when the clipped lambda is at or below L (see
    ``redundant_lambdas``). ``adam_start_at_grad`` starts Adam's moments at g and g^2 as
    OTOv2's code does (with bias correction this shrinks the first steps: a warm-up), instead
    of torch's zeros. Defaults: lr 0.1, sgd, no momentum or decay, target 0.5, tolerance 0.05,
    epsilon 0, no warm-up, select once, release, seed 0."""

    lr: float = 0.1
    variant: str = "sgd"
    momentum: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    target_group_sparsity: float = 0.5
    tolerance: float = 0.05
    epsilon: float = 0.0
    lam: float | None = None
    lam_amplify: float | None = None
    lam_hat: float | None = None
    warmup_steps: int = 0
    release: bool = True
    period: int | None = None
    reselect: bool = False
    score: str = "otov2"
    lam_bracket: bool = False
    adam_start_at_grad: bool = False
    seed: int = 0
    compile_stats: bool = False

    def __post_init__(self) -> None:
        if self.variant not in _VARIANT_DEFAULTS:
            raise ValueError(f"variant {self.variant!r}: choose from {list(_VARIANT_DEFAULTS)}")
        if self.score not in SCORES:
            raise ValueError(f"score {self.score!r}: choose from {list(SCORES)}")
        lam, amplify, hat = _VARIANT_DEFAULTS[self.variant]
        self.lam = lam if self.lam is None else self.lam
        self.lam_amplify = amplify if self.lam_amplify is None else self.lam_amplify
        self.lam_hat = hat if self.lam_hat is None else self.lam_hat
        self.betas = tuple(self.betas)
        checks = {
            "lr": self.lr >= 0,
            "target_group_sparsity": 0 <= self.target_group_sparsity < 1,
            "tolerance": 0 <= self.tolerance < 1,
            "epsilon": 0 <= self.epsilon <= 0.95,
            "lam": self.lam >= 0,
            "lam_amplify": self.lam_amplify >= 1,
            "lam_hat": self.lam_hat >= 1,
            "period": self.period is None or self.period >= 1,
            "warmup_steps": self.warmup_steps >= 0,
            "momentum": 0 <= self.momentum < 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"DHSPGOptions: out of range: {', '.join(bad)}")

    @property
    def redundant_share(self) -> float:
        """Share of ZIGs in the redundant set: target + tolerance, below 1 (as OTOv2 caps it)."""
        return min(self.target_group_sparsity + self.tolerance, 0.999)


def compile_decision(num_params: int, *, requested: bool | None = None,
                     compiler: str | None = None) -> tuple[bool, str]:
    """Whether to compile DHSPG's per-step sums (``compile_stats``), and why, for a log line.

    ``requested`` True/False (``--compile`` / ``--no-compile``) wins. Otherwise (auto) compile
    when a C++ compiler is found (torch.compile's CPU backend builds C++; ``compiler`` defaults
    to $CXX, c++, g++ or clang++ on PATH) and the model has at least ``COMPILE_MIN_PARAMS``
    parameters: below that the sums are cheap and the compile (tens of seconds) does not pay.
    """
    if requested is not None:
        return requested, f"compile {'on' if requested else 'off'}: asked for"
    found = compiler if compiler is not None else _find_compiler()
    if not found:
        return False, "compile off (auto): no C++ compiler found ($CXX, c++, g++, clang++)"
    if num_params < COMPILE_MIN_PARAMS:
        return False, (f"compile off (auto): {num_params:,} parameters, below "
                       f"{COMPILE_MIN_PARAMS:,}")
    return True, f"compile on (auto): {num_params:,} parameters, C++ compiler {found}"


def _find_compiler() -> str:
    import os

    candidates = [os.environ.get("CXX", ""), "c++", "g++", "clang++"]
    return next((path for name in candidates if name and (path := shutil.which(name))), "")


def redundant_lambdas(
    xx: torch.Tensor, xd: torch.Tensor, dd: torch.Tensor, *, lam: float, amplify: float,
    hat: float, bracket: bool = False,
) -> torch.Tensor:
    """Per-ZIG lam_g for the redundant step s = d + lam_g * x/||x|| (the update is x -= lr*s).

    Descent needs <s, d> > 0: ||d||^2 + lam_g <x,d>/||x|| > 0, so if <x,d> < 0,
    lam_g < U = ||d||^2 ||x|| / -<x,d>. Shrinking ||x|| needs <s, x> > 0: lam_g > L = -<x,d>/||x||.
    L < U by Cauchy-Schwarz unless x and d are parallel. If <x,d> < 0 we take amplify * L clipped
    into [lam, lam * hat], replaced by the midpoint (L + U) / 2 when it reaches U (OTOv2's rule:
    descent is kept, shrinking is not forced, so the groups the loss defends most may grow);
    ``bracket`` also takes the midpoint when it is at or below L. lam if <x,d> >= 0.
    """
    tiny = torch.finfo(xx.dtype).tiny
    norm = xx.sqrt().clamp_min(tiny)
    lower = (-xd / norm).clamp_min(0)
    upper = torch.where(xd < 0, dd * norm / (-xd).clamp_min(tiny), torch.full_like(xx, math.inf))
    candidate = (amplify * lower).clamp(lam, lam * hat)
    outside = candidate >= upper
    if bracket:
        outside |= candidate <= lower
    adjusted = torch.where(outside, (lower + upper) / 2, candidate)
    return torch.where(xd < 0, adjusted, torch.full_like(xx, lam))


def otov2_score(xx: torch.Tensor, xd: torch.Tensor, dd: torch.Tensor,
                sizes: torch.Tensor) -> torch.Tensor:
    """Per-ZIG redundancy (highest = redundant): 1/2 cos(x, d) + 1/2 / (||x||/size + 1e-6), each
    term divided by its l2 norm over all ZIGs, as OTOv2's ``partition_groups``.

    cos(x, d) is high when the descent step -d already shrinks the ZIG (the loss does not
    resist its removal); the second term favours ZIGs of small average magnitude."""
    norm, dnorm = xx.sqrt(), dd.sqrt()
    cos = xd / (norm * dnorm).clamp_min(1e-8)
    small = 1.0 / (norm / sizes + 1e-6)
    return 0.5 * _unit(cos) + 0.5 * _unit(small)


def _unit(values: torch.Tensor) -> torch.Tensor:
    return values / torch.linalg.vector_norm(values).clamp_min(1e-12)


def salience(xx: torch.Tensor, xd: torch.Tensor, dd: torch.Tensor,
             sizes: torch.Tensor) -> torch.Tensor:
    """Per-ZIG importance (our older score, ``score="salience"``): 1/2 cos(x, -d) + 1/2
    ||x||/size, each min-max normalized over the non-zero ZIGs; zero ZIGs get -inf (always
    redundant). Low cos(x, -d): the step already shrinks the ZIG, so low means redundant.
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


def select_redundant(redundancy: torch.Tensor, count: int, group_sizes: Iterable[int],
                     order: torch.Tensor | None = None) -> torch.Tensor:
    """BoolTensor[K]: the ``count`` ZIGs of highest ``redundancy`` (ties in ``order``, default
    ZIG order), then in every prunable group (a connected component: ZIG ids run group by
    group) chosen whole, its least redundant ZIG is kept: shrink needs one channel of each
    (OTOv2 keeps at least one group per component). ``redundancy`` -inf is never chosen."""
    order = torch.arange(redundancy.numel(), device=redundancy.device) if order is None else order
    ranked = order[torch.argsort(-redundancy[order], stable=True)]
    chosen = torch.zeros(redundancy.numel(), dtype=torch.bool, device=redundancy.device)
    chosen[ranked[:count]] = True
    chosen &= redundancy > -math.inf
    start = 0
    for size in group_sizes:
        part = slice(start, start + size)
        if size and bool(chosen[part].all()):
            chosen[start + int(torch.argmin(redundancy[part]))] = False
        start += size
    return chosen


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
        self._released = False

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
        if "exp_avg" not in state and self.options.adam_start_at_grad:
            state.update(step=1, exp_avg=grad.clone(), exp_avg_sq=grad * grad)
        else:
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

    @property
    def released(self) -> bool:
        """True once the target was reached and the push stopped: from then on every step is a
        plain step and the ZIGs in ``held_zero`` stay exactly zero (what slim continuation
        needs before it deletes them)."""
        return self._released

    @property
    def held_zero(self) -> torch.Tensor:
        """BoolTensor[K]: the ZIGs this optimizer projected to zero and holds there (a copy)."""
        return self._zeroed.clone()

    def _sparse_step(self, directions: dict[str, torch.Tensor], lr: float) -> None:
        zig, opt = self.zig, self.options
        if not self._released and opt.release and self._target_reached():
            self._released = True
        if self._released:  # plain steps; the zero ZIGs stay zero (OTOv2's fixed_zero_groups)
            self._write(directions, torch.ones(zig.num_groups, device=zig.device), self._zeroed,
                        lr)
            return
        since = self._t - opt.warmup_steps
        selecting = since == 0 or (opt.period is not None and since % opt.period == 0)
        if selecting or bool((self._redundant & ~self._zeroed).any()):
            xx, xd, dd = zig.pair_stats(zig.params(), directions, compiled=opt.compile_stats)
        else:
            # Only redundant ZIGs' sums are read, and every redundant ZIG was projected last
            # step, so is exactly 0 (only this optimizer writes the parameters between steps):
            # their sums are 0. This skips the sweep once the redundant set is zero.
            xx = xd = dd = torch.zeros(zig.num_groups, device=zig.device)
        if selecting:
            self._redundant = self._select(xx, xd, dd)
        lam = redundant_lambdas(xx, xd, dd, lam=opt.lam, amplify=opt.lam_amplify,
                                hat=opt.lam_hat, bracket=opt.lam_bracket)
        self._lam = torch.where(self._redundant, lam, 0)
        norm = xx.sqrt()
        push = torch.where(norm > 0, self._lam / norm.clamp_min(1e-30), 0)
        # x^ = (1 - lr*push) x - lr d, so <x^, x> = (1 - lr*push) xx - lr xd: no extra pass
        kept = (1 - lr * push) * xx - lr * xd
        project = self._redundant & ((kept < opt.epsilon * xx) | (xx == 0))
        self._write(directions, 1 - lr * push, project, lr)

    def _target_reached(self) -> bool:
        """The zero ZIGs (all projected by this optimizer) reach the target group sparsity."""
        zeros = int(self._zeroed.sum())
        return zeros >= self.options.target_group_sparsity * self.zig.num_groups

    def _select(self, xx: torch.Tensor, xd: torch.Tensor, dd: torch.Tensor) -> torch.Tensor:
        """Redundant set: the ``redundant_share`` of ZIGs ranked most redundant by the score,
        at least one ZIG kept per prunable group (``select_redundant``). With ``period``, also
        every zero ZIG and, unless ``reselect``, every redundant ZIG whose push is working."""
        opt = self.options
        if opt.score == "otov2":
            redundancy = otov2_score(xx, xd, dd, self._sizes)
        else:
            redundancy = -salience(xx, xd, dd, self._sizes)
        count = int(self.zig.num_groups * opt.redundant_share)
        if opt.period is not None:
            norm = xx.sqrt()
            keep = xx == 0
            if not opt.reselect:
                keep |= self._redundant & (norm < STALLED * self._chosen_norm)
            self._chosen_norm = norm
            redundancy = redundancy.masked_fill(keep, math.inf)
            count = max(count, int(keep.sum()))
        return select_redundant(redundancy, count, self.zig.group_sizes.values(), self._tiebreak)

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
            "released": self._released,
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
                        "released": self._released, "options": asdict(self.options)}
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
        self._released = bool(extra.get("released", False))


def _mean(values: torch.Tensor) -> float:
    return float(values.mean()) if values.numel() else 0.0
