"""Property tests (hypothesis): every target's string form parses back to the same target, and the statistics, the
log likelihood and their gradients are finite for any logits, extreme ones (±50) included."""

import math

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import bayestrex as bt
from bayestrex import targets

FAST = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
K_MAX = 12

unit = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def pair(draw, k: int = K_MAX):
    a = draw(st.integers(0, k - 1))
    b = draw(st.integers(0, k - 1).filter(lambda b: b != a))
    return a, b


@st.composite
def probability_vector(draw):
    """Either normalised random weights (float64 noise in the last digits) or decimals as a user types them, e.g.
    0.3333333,0.3333333,0.3333334 (integers summing to 10^digits)."""
    k = draw(st.integers(2, K_MAX))
    if draw(st.booleans()):
        w = draw(st.lists(st.floats(0.0, 1e6, allow_nan=False), min_size=k, max_size=k).filter(lambda w: sum(w) > 0))
        return [x / math.fsum(w) for x in w]
    digits = draw(st.integers(1, 9))
    cuts = sorted(draw(st.lists(st.integers(0, 10**digits), min_size=k - 1, max_size=k - 1)))
    parts = [hi - lo for lo, hi in zip([0, *cuts], [*cuts, 10**digits])]
    return [p / 10**digits for p in parts]


def any_target():
    return st.one_of(
        st.builds(targets.High, st.integers(0, K_MAX - 1), log=st.booleans()),
        pair().flatmap(lambda ab: st.builds(targets.Ambiguous, st.just(ab[0]), st.just(ab[1]), smooth=st.booleans(),
                                                          mass=st.booleans())),
        pair().flatmap(lambda ab: st.builds(targets.Boundary, st.just(ab[0]), st.just(ab[1]),
                                            margin=st.floats(0.0, 20.0, allow_nan=False))),
        pair().flatmap(lambda ab: st.builds(targets.Graded, st.just(ab[0]), st.just(ab[1]), unit)),
        pair().flatmap(lambda ab: st.builds(targets.Tied, st.just(ab[0]), st.just(ab[1]),
                                            st.floats(0.01, 0.99, allow_nan=False))),
        st.builds(targets.Uniform),
        probability_vector().map(targets.Probabilities),
    )


def num_classes(t: targets.Target) -> int:
    return t.q.numel() if isinstance(t, targets.Probabilities) else K_MAX


@FAST
@given(any_target(), st.data())
def test_string_form_parses_back_to_the_same_target(t, data):
    text = str(t)
    back = targets.parse(text)
    assert type(back) is type(t) and str(back) == text
    k = num_classes(t)
    assert torch.equal(back.value(k), t.value(k)) and back.names(k) == t.names(k)
    logits = torch.tensor(data.draw(st.lists(st.floats(-50, 50), min_size=k, max_size=k)))
    p = torch.softmax(logits, -1)
    assert torch.equal(back.statistic(p), t.statistic(p))
    if isinstance(t, targets.Probabilities):
        assert torch.equal(back.q, t.q)


def test_the_issue_probs_form_round_trips():
    t = targets.parse("probs:0.3333333,0.3333333,0.3333334")
    assert str(t) == "probs:0.3333333,0.3333333,0.3333334" and torch.equal(targets.parse(str(t)).q, t.q)
    assert str(targets.parse("graded:1,7,0.123456789")) == "graded:1,7,0.123456789"
    assert str(targets.parse("probs:1,0")) == "probs:1,0"  # integers stay short


logit_rows = st.lists(st.one_of(st.floats(-50, 50), st.sampled_from([-50.0, 50.0, 0.0])), min_size=K_MAX,
                      max_size=K_MAX)


class Logits(torch.nn.Module):
    """The identity as a "generator" of logits: a code z is the classifier's logits, so any logits can be tested."""

    latent_dim = K_MAX

    def forward(self, z):
        return z


@pytest.mark.parametrize("sigma", [0.05, 1e-3])
@FAST
@given(t=any_target(), rows=st.lists(logit_rows, min_size=1, max_size=4))
# found by this test: d log p / dp = 1/p times (u - u*) / sigma² overflowed float32 where p ~ e^-79 (now log_softmax)
@example(t=targets.High(5, log=True), rows=[[0.0] * 5 + [-36.0] + [0.0] * 5 + [43.0]])
@example(t=targets.Boundary(0, 10), rows=[[0.0] * 9 + [50.0, -21.0, 0.0]])
def test_statistics_likelihood_and_gradients_are_finite_for_any_logits(t, rows, sigma):
    if isinstance(t, targets.Probabilities) and t.q.numel() != K_MAX:
        t = targets.Probabilities(torch.full((K_MAX,), 1.0 / K_MAX, dtype=torch.float64))
    z = torch.tensor(rows)
    p = torch.softmax(z.requires_grad_(True), -1)
    u = t.statistic(p)
    assert u.shape == (len(rows), len(t.names(K_MAX))) and torch.isfinite(u).all()
    (grad,) = torch.autograd.grad(u.sum(), z)
    assert torch.isfinite(grad).all()
    post = bt.Posterior(Logits(), lambda x: x, t, sigma=sigma)
    pe, g, aux = post.potential_and_grad(z.detach())
    assert torch.isfinite(pe).all() and torch.isfinite(g).all() and torch.isfinite(aux["u"]).all()
