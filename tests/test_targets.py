import math

import pytest
import torch

from bayestrex import targets
from bayestrex.diagnostics import attained

P = torch.tensor([[0.05, 0.10, 0.00, 0.40, 0.00, 0.00, 0.00, 0.00, 0.35, 0.10]])  # K = 10


def test_high_is_the_class_probability():
    t = targets.parse("high:3")
    assert t.statistic(P).flatten().tolist() == pytest.approx([0.40])
    assert t.value(10).tolist() == [1.0]
    assert t.names(10) == ["p3"]


def test_ambiguous_two_statistic_form_by_hand():
    t = targets.parse("ambiguous:3,8")
    # |0.40 - 0.35| = 0.05; min(0.40, 0.35) - max(others) = 0.35 - 0.10 = 0.25
    assert t.statistic(P)[0].tolist() == pytest.approx([0.05, 0.25])
    assert t.value(10).tolist() == [0.0, 0.5]


def test_ambiguous_smooth_and_mass_forms_by_hand_share_the_level_set():
    # P: p3 = 0.40, p8 = 0.35, largest other 0.10
    assert targets.parse("ambiguous:3,8,smooth").statistic(P)[0].tolist() == pytest.approx([0.05, 0.275])
    mass = targets.parse("ambiguous:3,8,mass")
    assert mass.statistic(P)[0].tolist() == pytest.approx([0.05, 0.375]) and mass.smooth
    assert str(mass) == "ambiguous:3,8,mass" and mass.value(10).tolist() == [0.0, 0.5]
    tie = torch.tensor([[0.0] * 3 + [0.5] + [0.0] * 4 + [0.5, 0.0]])  # on the level set all three forms agree
    for form in ("", ",smooth", ",mass"):
        assert targets.parse("ambiguous:3,8" + form).statistic(tie)[0].tolist() == pytest.approx([0.0, 0.5])


def test_tied_is_the_log_ratio_and_the_log_mass_of_the_pair():
    t = targets.parse("tied:3,8,0.9")
    assert t.statistic(P)[0].tolist() == pytest.approx([math.log(0.40 / 0.35), math.log(0.75)])
    assert t.value(10).tolist() == pytest.approx([0.0, math.log(0.9)]) and str(t) == "tied:3,8,0.9"
    zero = torch.zeros(1, 10)
    zero[0, 0] = 1.0  # both classes at exactly 0: finite statistics
    assert torch.isfinite(t.statistic(zero)).all()
    for bad, message in (("tied:3,8,1", "mass must be in \\(0, 1\\)"), ("tied:3,8", "expects 3 arguments"),
                         ("tied:3,3,0.5", "two different classes"), ("tied:3,8,x", "MASS must be a number")):
        with pytest.raises(ValueError, match=message):
            targets.parse(bad)


def test_ambiguous_with_two_classes_has_no_others():
    t = targets.Ambiguous(0, 1)
    assert t.statistic(torch.tensor([[0.5, 0.5]]))[0].tolist() == pytest.approx([0.0, 0.5])


def test_uniform_is_max_minus_min():
    t = targets.parse("uniform")
    assert t.statistic(P).flatten().tolist() == pytest.approx([0.40])
    assert t.statistic(torch.full((1, 10), 0.1)).flatten().tolist() == pytest.approx([0.0])


def test_graded_pins_the_whole_vector():
    t = targets.parse("graded:1,7,0.3")
    assert t.value(10).tolist() == pytest.approx([0, 0.3, 0, 0, 0, 0, 0, 0.7, 0, 0])
    assert torch.equal(t.statistic(P), P)
    assert t.names(10)[7] == "p7"


def test_probs_target_and_custom_target():
    q = [0.5, 0.5] + [0.0] * 8
    assert targets.parse("probs:" + ",".join(map(str, q))).value(10).tolist() == q
    top2 = targets.Custom(lambda p: p.topk(2, dim=-1).values.sum(-1), 0.9, names=["top2"])
    top2.validate(10)
    assert top2.statistic(P).flatten().tolist() == pytest.approx([0.75])


def test_statistics_are_differentiable():
    rng = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 10, generator=rng).requires_grad_(True)
    for spec in ["high:0", "ambiguous:3,8", "uniform", "graded:1,7,0.3"]:
        u = targets.parse(spec).statistic(torch.softmax(logits, -1))
        # a random weighting: the plain sum of a probability vector is 1 everywhere, its gradient exactly 0
        (g,) = torch.autograd.grad((u * torch.rand(u.shape, generator=rng)).sum(), logits)
        assert torch.isfinite(g).all() and g.abs().sum() > 0, spec


def test_attainment_needs_every_statistic_within_tolerance():
    u = torch.tensor([[0.02, 0.47], [0.02, 0.40], [0.06, 0.50]])
    assert attained(u, torch.tensor([0.0, 0.5]), 0.05).tolist() == [True, False, False]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("high:10", "class index 10 is out of range for a classifier with 10 classes"),
        ("ambiguous:3,12", "class index 12 is out of range"),
        ("graded:1,11,0.5", "out of range"),
    ],
)
def test_class_index_checked_against_K(spec, message):
    with pytest.raises(ValueError, match=message):
        targets.parse(spec).validate(10)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("graded:1,7,1.5", r"alpha must be in \[0, 1\], got 1.5"),
        ("graded:1,7,-0.1", r"must be in \[0, 1\]"),
        ("probs:0.5,0.6", "must sum to 1"),
        ("probs:1.5,-0.5", r"in \[0, 1\]"),
        ("ambiguous:3,3", "two different classes"),
        ("high:-1", "out of range"),
        ("high:x", "integer class indices"),
        ("ambiguous:3", "expects 2 integer"),
        ("uniform:3", "takes no arguments"),
        ("confident:3", "unknown target"),
    ],
)
def test_bad_target_strings(spec, message):
    with pytest.raises(ValueError, match=message):
        targets.parse(spec)


def test_probs_target_length_must_match_K():
    with pytest.raises(ValueError, match="2 entries but the classifier has 10 classes"):
        targets.parse("probs:0.5,0.5").validate(10)


def test_custom_target_shape_is_checked():
    bad = targets.Custom(lambda p: p[..., :3], [1.0, 0.0])
    with pytest.raises(ValueError, match="one column per target value"):
        bad.validate(10)
    with pytest.raises(ValueError, match="tolerance"):
        targets.High(0, tolerance=0)


@pytest.mark.parametrize("spec, saturating, probs", [
    ("high:0", [0], None),
    ("high:0,log", [0], None),
    ("ambiguous:3,8,mass", [1], [0.01] * 3 + [0.46] + [0.01] * 4 + [0.46, 0.01]),
    ("ambiguous:3,8", [1], [0.01] * 3 + [0.46] + [0.01] * 4 + [0.46, 0.01]),
    ("graded:1,7,0.3", [0, 2, 3, 4, 5, 6, 7, 8, 9], [0.01, 0.3] + [0.01] * 5 + [0.62, 0.01, 0.01]),
    ("probs:0.2,0.3,0.5,0,0,0,0,0,0,0", [2, 3, 4, 5, 6, 7, 8, 9], [0.2, 0.3, 0.43] + [0.01] * 7),
    ("probs:" + ",".join(["0.1"] * 10), [], [0.1] * 10),  # no 0 or 1: attained at logits log q
    ("graded:1,7,0", list(range(10)), None),  # p_7 = 1: nothing attained
    ("tied:3,8,0.9", [], [0.0125] * 3 + [0.45] + [0.0125] * 4 + [0.45, 0.0125]),
    ("uniform", [], [0.1] * 10),
])
def test_saturating_statistics_are_those_a_softmax_only_approaches(spec, saturating, probs):
    """``saturating``: the statistics whose value needs a probability of exactly 0 or 1. The rest are attained: at the
    given strictly positive probabilities (finite logits) they equal their target values."""
    t = targets.parse(spec)
    assert t.saturating(10) == saturating
    if probs is None:
        return
    p = torch.tensor([probs], dtype=torch.float64)
    assert abs(float(p.sum()) - 1) < 1e-12
    r = (t.statistic(p, log_probs=p.log()) if t.uses_log_probs else t.statistic(p))[0] - t.value(10).double()
    hard = [j for j in range(len(r)) if j not in saturating]
    assert r[hard].abs().max() < 1e-6, r
    assert (r[saturating].abs() > 1e-3).all(), r
    if saturating:  # and pinning the saturating ones too asks for a probability of exactly 0 or 1
        assert r.abs().max() > 1e-3
