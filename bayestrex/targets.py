"""Targets: the statistic of the classifier's probabilities that an explanation pins.

A target is a statistic ``u(p)`` of the probability vector ``p`` (shape ``[..., K]``) and the value ``u*`` it
should take. The posterior over latent codes is ``p(z | u*) ∝ N(z; 0, I) · N(u*; u(p(z)), σ²)``, one Gaussian
factor per statistic. Each target also validates its arguments against the number of classes ``K``.

=====================  ==========================================================  ==================
spec                   statistics u(p)                                             target value u*
=====================  ==========================================================  ==================
``high:C``             ``p_C``  (``high:C,log``: ``log p_C``)                       ``1``  (``0``)
``ambiguous:A,B``      ``|p_A - p_B|``,  ``min(p_A, p_B) - max_{k∉{A,B}} p_k``       ``0``, ``0.5``
``boundary:A,B[,M]``   ``log p_A - log p_B``,  violation of ``log p_{A,B} - log p_k >= M``  ``0``, ``0``
``uniform``            ``max_k p_k - min_k p_k``                                   ``0``
``graded:A,B,ALPHA``   ``p_0, …, p_{K-1}``                                         ``p_A = ALPHA``, ``p_B = 1 - ALPHA``,
                                                                                   others ``0``
``probs:Q0,…,QK-1``    ``p_0, …, p_{K-1}``                                         ``Q``
``Custom(fn, value)``  ``fn(p)``                                                   ``value``
=====================  ==========================================================  ==================

A new target is one subclass: set ``spec`` (its name in strings), implement ``statistic``, ``value`` and
``names``, and, if it has a string form, ``from_args``. ``parse`` finds it by its ``spec``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

__all__ = ["Target", "High", "Ambiguous", "Boundary", "Uniform", "Probabilities", "Graded", "Tied", "Custom", "parse",
           "TARGETS"]

#: string spec name -> Target subclass; filled by ``Target.__init_subclass__``.
TARGETS: dict[str, type[Target]] = {}


def _class_index(name: str, value, num_classes: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise TypeError(f"{name} must be an integer class index, got {value!r}")
    if value < 0 or (num_classes is not None and value >= num_classes):
        bound = f"[0, {num_classes - 1}]" if num_classes is not None else ">= 0"
        detail = f" for a classifier with {num_classes} classes" if num_classes is not None else ""
        raise ValueError(f"{name}: class index {value} is out of range{detail}; expected {bound}")
    return value


def _number(value: float) -> str:
    """The shortest decimal form of ``value`` that parses back to the same float (``1.0`` -> ``"1"``)."""
    return repr(float(value)).removesuffix(".0")


def _log(probs: torch.Tensor, log_probs: torch.Tensor | None) -> torch.Tensor:
    """``log p``: ``log_probs`` when given, else the log of ``probs`` clamped at the smallest normal float."""
    return log_probs if log_probs is not None else probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


def _pair_and_number(args, form: str, what: str) -> tuple[int, int, float]:
    """``(a, b, x)`` from the arguments of a ``NAME:A,B,X`` target string (``form``); ``what`` opens the error for a
    non-number ``X``."""
    if len(args) != 3:
        raise ValueError(f"target {form!r} expects 3 arguments, got {','.join(args)!r}")
    (a, b), x = _ints(args[:2], 2, form), args[2]
    try:
        return a, b, float(x)
    except ValueError:
        raise ValueError(f"{what}, got {x!r}") from None


def _saturating_probs(q: torch.Tensor) -> list[int]:
    """The statistics ``p_k`` pinned at ``q_k`` that a softmax only approaches: every 0 and 1 and, if there are any,
    the last of the others (they then sum to 1, so pinning all of them pins the rest to exactly 0). A ``q`` with no 0
    or 1 is attained (logits ``log q``)."""
    bound = [k for k, v in enumerate(q.tolist()) if v in (0.0, 1.0)]
    inner = [k for k in range(len(q)) if k not in bound]
    return sorted(bound + inner[-1:]) if bound else []


def _unit_interval(name: str, value) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:  # also False for NaN
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


class Target:
    """Base class: a statistic ``u(p) -> [..., m]`` of the probabilities and its target value ``u* [m]``.

    Parameters
    ----------
    tolerance : float
        A draw *attains* the target when every statistic is within ``tolerance`` of its target value.
    """

    spec: str | None = None
    #: whether the statistics are differentiable on the level set (kernels that move along the level set need it)
    smooth: bool = True
    #: whether ``statistic`` also takes ``log_probs`` (the classifier's log-softmax, ``[..., K]``): statistics of
    #: ``log p`` computed from it keep finite gradients where ``p`` underflows (``d log p / dp = 1/p`` overflows)
    uses_log_probs: bool = False

    def __init__(self, *, tolerance: float = 0.05):
        tolerance = float(tolerance)
        if not (tolerance > 0 and math.isfinite(tolerance)):
            raise ValueError(f"tolerance must be a positive finite number, got {tolerance}")
        self.tolerance = tolerance

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("spec"):
            TARGETS[cls.spec] = cls

    # -- to implement ------------------------------------------------------------------------------------------
    def statistic(self, probs: torch.Tensor) -> torch.Tensor:
        """Statistics ``u`` of probabilities ``probs [..., K]``, shape ``[..., m]``; differentiable."""
        raise NotImplementedError

    def value(self, num_classes: int) -> torch.Tensor:
        """Target values ``u*``, shape ``[m]``."""
        raise NotImplementedError

    def names(self, num_classes: int) -> list[str]:
        """One short name per statistic (used as DataTree coordinates and plot titles)."""
        raise NotImplementedError

    def saturating(self, num_classes: int) -> list[int]:
        """Indices of the statistics whose target value a softmax only approaches as logits diverge (a probability
        of 0 or 1, or a set of them that together hold all the mass). Kernels that move along the level set
        (``constrained``) keep these as soft terms of the potential instead of constraints: the rest is attained.
        None by default (a custom statistic is taken as attained)."""
        return []

    def validate(self, num_classes: int) -> None:
        """Raise ``ValueError`` if the target does not fit a classifier with ``num_classes`` classes."""
        if num_classes < 2:
            raise ValueError(f"classifier must return logits for at least 2 classes, got {num_classes}")

    @classmethod
    def from_args(cls, args: list[str]) -> Target:
        raise ValueError(f"target {cls.spec!r} has no string form")

    def __repr__(self) -> str:
        return self.spec or type(self).__name__


class High(Target):
    """High confidence in class ``c``: ``u = p_c``, ``u* = 1``.

    ``log=True`` (``"high:C,log"``) measures it as ``u = log p_c``, ``u* = 0``: the same level set, but its gradient
    does not vanish where ``p_c`` is tiny (the cross-entropy of xGEMs); ``tolerance`` then applies to ``log p_c``."""

    spec = "high"

    def __init__(self, c: int, *, log: bool = False, tolerance: float = 0.05):
        super().__init__(tolerance=tolerance)
        self.c = _class_index("class index c", c)
        self.log = self.uses_log_probs = bool(log)

    def statistic(self, probs, log_probs=None):
        if not self.log:
            return probs[..., self.c : self.c + 1]
        return _log(probs, log_probs)[..., self.c : self.c + 1]

    def value(self, num_classes):
        return torch.zeros(1) if self.log else torch.ones(1)

    def names(self, num_classes):
        return [f"logp{self.c}" if self.log else f"p{self.c}"]

    def saturating(self, num_classes):
        return [0]  # p_c = 1

    def validate(self, num_classes):
        super().validate(num_classes)
        _class_index("class index c", self.c, num_classes)

    @classmethod
    def from_args(cls, args):
        if len(args) == 2 and args[1] == "log":
            return cls(_ints(args[:1], 1, "high:C[,log]")[0], log=True)
        (c,) = _ints(args, 1, "high:C[,log]")
        return cls(c)

    def __repr__(self):
        return f"high:{self.c}" + (",log" if self.log else "")


class _Pair(Target):
    """A target about two different classes ``a`` and ``b`` (checked here once for every such target)."""

    def __init__(self, a: int, b: int, *, tolerance: float = 0.05):
        super().__init__(tolerance=tolerance)
        self.a, self.b = _class_index("class index a", a), _class_index("class index b", b)
        if self.a == self.b:
            raise ValueError(f"{self.spec} target needs two different classes, got a = b = {self.a}")

    def validate(self, num_classes):
        Target.validate(self, num_classes)
        _class_index("class index a", self.a, num_classes)
        _class_index("class index b", self.b, num_classes)


class Ambiguous(_Pair):
    """Ambiguous between classes ``a`` and ``b`` (the two-statistic form of Bayes-TrEx).

    ``u1 = |p_a - p_b|`` with ``u1* = 0`` and ``u2 = min(p_a, p_b) - max_{k ∉ {a, b}} p_k`` with ``u2* = 0.5``:
    the two classes are tied and together take all the mass.

    Both statistics have a kink exactly on the level set (``|.|`` and ``min`` where ``p_a = p_b``). ``smooth=True``
    (``"ambiguous:A,B,smooth"``) uses ``u1 = p_a - p_b`` (the same likelihood: only ``u1²`` enters it) and
    ``u2 = (p_a + p_b) / 2 - max_{k ∉ {a, b}} p_k`` (equal to the other ``u2`` on the level set, differentiable there):
    the same level set, a slightly different relaxation of it at ``sigma > 0``. Its ``max`` over the other classes
    still has kinks where two of them tie, which near the level set (all of them near 0) they often do: on the digits
    network they cost ``constrained`` a 4-5x smaller step (``analyses/results/bench_sigma``). ``mass=True``
    (``"ambiguous:A,B,mass"``) uses ``u2 = (p_a + p_b) / 2`` with ``u2* = 0.5`` (the pair holds all the mass): the same
    level set again, a relaxation that penalises the other classes' total instead of the largest, and differentiable
    everywhere; the form for kernels moving along the level set (``constrained``).
    """

    spec = "ambiguous"

    def __init__(self, a: int, b: int, *, smooth: bool = False, mass: bool = False, tolerance: float = 0.05):
        super().__init__(a, b, tolerance=tolerance)
        self.mass = bool(mass)
        self.smooth = bool(smooth) or self.mass

    def statistic(self, probs):
        pa, pb = probs[..., self.a], probs[..., self.b]
        if self.mass:
            return torch.stack([pa - pb, 0.5 * (pa + pb)], dim=-1)
        others = probs.clone()
        others[..., [self.a, self.b]] = 0.0
        top = others.amax(dim=-1)
        if self.smooth:
            return torch.stack([pa - pb, 0.5 * (pa + pb) - top], dim=-1)
        return torch.stack([(pa - pb).abs(), torch.minimum(pa, pb) - top], dim=-1)

    def value(self, num_classes):
        return torch.tensor([0.0, 0.5])

    def saturating(self, num_classes):
        return [1]  # the pair holding all the mass; the tie (u1 = 0) is attained

    def names(self, num_classes):
        if self.mass:
            return [f"diff_{self.a}_{self.b}", f"meanmass_{self.a}_{self.b}"]
        if self.smooth:
            return [f"diff_{self.a}_{self.b}", f"meanmargin_{self.a}_{self.b}"]
        return [f"absdiff_{self.a}_{self.b}", f"margin_{self.a}_{self.b}"]

    @classmethod
    def from_args(cls, args):
        form = args[2] if len(args) == 3 and args[2] in ("smooth", "mass") else None
        a, b = _ints(args[:2] if form else args, 2, "ambiguous:A,B[,smooth|mass]")
        return cls(a, b, smooth=form == "smooth", mass=form == "mass")

    def __repr__(self):
        return f"ambiguous:{self.a},{self.b}" + (",mass" if self.mass else ",smooth" if self.smooth else "")


class Boundary(_Pair):
    """On the decision boundary between ``a`` and ``b``, every other class below both (CDeepEx's constraints).

    With log-probabilities ``l``: ``h = l_a - l_b`` (target 0) and the constraint violation
    ``v = max(0, max_k (margin - (l_a - l_k)), max_k (margin - (l_b - l_k)))`` over ``k ∉ {a, b}`` (target 0; zero when
    both beat every other class by ``margin``). Its posterior with a prior centred at ``z0`` is CDeepEx's problem
    relaxed by ``sigma``; :meth:`constraints` gives the raw ``h`` and ``g <= 0`` that :func:`bayestrex.special.cdeepex`
    enforces exactly.
    """

    spec = "boundary"
    smooth = False  # the violation max(0, ...) has a kink where it meets the level set
    uses_log_probs = True

    def __init__(self, a: int, b: int, *, margin: float = 0.0, tolerance: float = 0.05):
        super().__init__(a, b, tolerance=tolerance)
        self.margin = float(margin)
        if not (self.margin >= 0 and math.isfinite(self.margin)):
            raise ValueError(f"boundary margin must be a finite number >= 0, got {margin}")

    def constraints(self, probs, log_probs=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``h [...]`` (equality, ``= 0`` on the boundary) and ``g [..., 2(K-2)]`` (inequalities, ``<= 0`` when met)."""
        llh = _log(probs, log_probs)
        keep = [k for k in range(probs.shape[-1]) if k not in (self.a, self.b)]
        la, lb, lk = llh[..., self.a], llh[..., self.b], llh[..., keep]
        g = torch.cat([self.margin - (la.unsqueeze(-1) - lk), self.margin - (lb.unsqueeze(-1) - lk)], dim=-1)
        return la - lb, g

    def statistic(self, probs, log_probs=None):
        h, g = self.constraints(probs, log_probs)
        violation = g.clamp_min(0).amax(dim=-1) if g.shape[-1] else torch.zeros_like(h)
        return torch.stack([h, violation], dim=-1)

    def value(self, num_classes):
        return torch.zeros(2)

    def names(self, num_classes):
        return [f"logratio_{self.a}_{self.b}", f"violation_{self.a}_{self.b}"]

    @classmethod
    def from_args(cls, args):
        if len(args) == 3:
            a, b = _ints(args[:2], 2, "boundary:A,B[,MARGIN]")
            try:
                return cls(a, b, margin=float(args[2]))
            except ValueError as e:
                raise ValueError(f"target 'boundary:A,B,MARGIN' expects a margin >= 0, got {args[2]!r}: {e}"
                                 ) from None
        a, b = _ints(args, 2, "boundary:A,B[,MARGIN]")
        return cls(a, b)

    def __repr__(self):
        return f"boundary:{self.a},{self.b}" + (f",{_number(self.margin)}" if self.margin else "")


class Uniform(Target):
    """Uniform ambiguity over all classes: ``u = max_k p_k - min_k p_k``, ``u* = 0``."""

    spec = "uniform"
    smooth = False  # max - min: kinks wherever two classes tie, which the uniform vector is

    def statistic(self, probs):
        return (probs.amax(dim=-1) - probs.amin(dim=-1)).unsqueeze(-1)

    def value(self, num_classes):
        return torch.zeros(1)

    def names(self, num_classes):
        return ["range"]

    @classmethod
    def from_args(cls, args):
        if args:
            raise ValueError(f"target 'uniform' takes no arguments, got {','.join(args)!r}")
        return cls()


class Probabilities(Target):
    """The whole probability vector pinned: ``u_k = p_k``, ``u* = q`` (``q`` non-negative, summing to 1)."""

    spec = "probs"

    def __init__(self, q: Sequence[float], *, tolerance: float = 0.05):
        super().__init__(tolerance=tolerance)
        q = torch.as_tensor(q, dtype=torch.float64).flatten()
        if q.numel() < 2 or not torch.isfinite(q).all() or (q < 0).any() or (q > 1).any():
            raise ValueError(f"target probabilities must be at least 2 numbers in [0, 1], got {q.tolist()}")
        if abs(float(q.sum()) - 1.0) > 1e-6:
            raise ValueError(f"target probabilities must sum to 1, got sum {float(q.sum()):.6g}")
        self.q = q.float()
        self._given = q  # float64, as given: its string form re-parses to this same target

    def statistic(self, probs):
        return probs

    def value(self, num_classes):
        return self.q

    def saturating(self, num_classes):
        return _saturating_probs(self.value(num_classes))

    def names(self, num_classes):
        return [f"p{k}" for k in range(num_classes)]

    def validate(self, num_classes):
        super().validate(num_classes)
        if self.q.numel() != num_classes:
            raise ValueError(
                f"target probabilities have {self.q.numel()} entries but the classifier has {num_classes} classes"
            )

    @classmethod
    def from_args(cls, args):
        try:
            return cls([float(a) for a in args])
        except ValueError as e:
            if "could not convert" in str(e):
                raise ValueError(f"target 'probs:Q0,...' expects numbers, got {','.join(args)!r}") from None
            raise

    def __repr__(self):
        return "probs:" + ",".join(map(_number, self._given.tolist()))


class Graded(_Pair):
    """Graded level between ``a`` and ``b``: ``p_a = alpha``, ``p_b = 1 - alpha``, every other class 0."""

    spec = "graded"
    statistic = Probabilities.statistic
    names = Probabilities.names
    saturating = Probabilities.saturating

    def __init__(self, a: int, b: int, alpha: float, *, tolerance: float = 0.05):
        super().__init__(a, b, tolerance=tolerance)
        self.alpha = _unit_interval("graded target level alpha", alpha)

    def value(self, num_classes):
        q = torch.zeros(num_classes)
        q[self.a], q[self.b] = self.alpha, 1.0 - self.alpha
        return q

    @classmethod
    def from_args(cls, args):
        return cls(*_pair_and_number(args, "graded:A,B,ALPHA", "graded target level ALPHA must be a number in [0, 1]"))

    def __repr__(self):
        return f"graded:{self.a},{self.b},{_number(self.alpha)}"


class Tied(_Pair):
    """Tied between ``a`` and ``b`` with the pair holding ``mass`` of the probability, in log space:
    ``u = [log p_a − log p_b, log(p_a + p_b)]``, ``u* = [0, log mass]``, ``mass < 1``.

    Unlike ``ambiguous`` (whose level set asks the other classes for exactly 0, which a softmax only approaches) this
    level set is *attained* and smooth, so it has no saturated direction whose gradient vanishes on it: the form for
    kernels that follow the level set (``constrained``: its step size is flat in sigma here, where on ``ambiguous`` it
    shrinks; README, "Small σ on a network"). The statistics are in log units, so ``tolerance`` 0.05 means the ratio
    within 5% and the pair's mass within 5% of ``mass``.
    """

    spec = "tied"

    def __init__(self, a: int, b: int, mass: float = 0.9, *, tolerance: float = 0.05):
        super().__init__(a, b, tolerance=tolerance)
        mass = float(mass)
        if not 0.0 < mass < 1.0:  # also False for NaN
            raise ValueError(f"tied target mass must be in (0, 1) (1 is not attained by a softmax), got {mass}")
        self.mass = mass

    uses_log_probs = True

    def statistic(self, probs, log_probs=None):
        lp = _log(probs, log_probs)
        la, lb = lp[..., self.a], lp[..., self.b]
        return torch.stack([la - lb, torch.logaddexp(la, lb)], dim=-1)

    def value(self, num_classes):
        return torch.tensor([0.0, math.log(self.mass)])

    def names(self, num_classes):
        return [f"logratio_{self.a}_{self.b}", f"logmass_{self.a}_{self.b}"]

    @classmethod
    def from_args(cls, args):
        return cls(*_pair_and_number(args, "tied:A,B,MASS", "tied target MASS must be a number in (0, 1)"))

    def __repr__(self):
        return f"tied:{self.a},{self.b},{_number(self.mass)}"


class Custom(Target):
    """Any user statistic: ``u = fn(p)`` (``[...]`` or ``[..., m]``, differentiable in ``p``), target ``value``.

    >>> top2 = Custom(lambda p: p.topk(2).values.sum(-1), 1.0, names=["top2_mass"])
    """

    def __init__(self, fn: Callable, value, *, names: Sequence[str] | None = None, tolerance: float = 0.05):
        super().__init__(tolerance=tolerance)
        if not callable(fn):
            raise TypeError(f"Custom target needs a callable statistic fn, got {type(fn).__name__}")
        self.fn = fn
        self._value = torch.as_tensor(value, dtype=torch.float32).flatten()
        if not torch.isfinite(self._value).all():
            raise ValueError(f"Custom target value must be finite, got {self._value.tolist()}")
        m = self._value.numel()
        self._names = list(names) if names is not None else [f"u{i}" for i in range(m)]
        if len(self._names) != m:
            raise ValueError(f"Custom target has {m} target value(s) but {len(self._names)} names")

    def statistic(self, probs):
        u = self.fn(probs)
        return u.unsqueeze(-1) if u.dim() == probs.dim() - 1 else u

    def value(self, num_classes):
        return self._value

    def names(self, num_classes):
        return self._names

    def validate(self, num_classes):
        super().validate(num_classes)
        probe = torch.full((2, num_classes), 1.0 / num_classes)
        u = self.statistic(probe)
        if not isinstance(u, torch.Tensor) or u.shape != (2, self._value.numel()):
            got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
            raise ValueError(
                f"Custom target fn must map probabilities [N, {num_classes}] to a tensor [N] or "
                f"[N, {self._value.numel()}] (one column per target value), got {got}"
            )

    def __repr__(self):
        return "custom:" + ",".join(self._names)


def _ints(args: list[str], n: int, form: str) -> list[int]:
    if len(args) != n:
        raise ValueError(f"target {form!r} expects {n} integer argument(s), got {','.join(args)!r}")
    try:
        return [int(a) for a in args]
    except ValueError:
        raise ValueError(f"target {form!r} expects integer class indices, got {','.join(args)!r}") from None


def parse(text: str | Target) -> Target:
    """Build a target from its string form, e.g. ``"high:0"``, ``"ambiguous:3,8"``, ``"graded:1,7,0.3"``.

    A ``Target`` passes through unchanged.
    """
    if isinstance(text, Target):
        return text
    if not isinstance(text, str):
        raise TypeError(f"target must be a Target or a string such as 'ambiguous:3,8', got {type(text).__name__}")
    name, _, rest = text.strip().partition(":")
    cls = TARGETS.get(name.strip().lower())
    if cls is None:
        forms = ("high:C, ambiguous:A,B[,smooth|mass], boundary:A,B[,MARGIN], uniform, graded:A,B,ALPHA, "
                 "tied:A,B,MASS, probs:Q0,...,QK-1")
        raise ValueError(f"unknown target {text!r}; expected one of {forms}")
    args = [a.strip() for a in rest.split(",")] if rest.strip() else []
    return cls.from_args(args)
