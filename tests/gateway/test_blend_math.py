"""The pure blending core (``gateway.blending``): rules, gate, speculative rule, top-k union, vocabulary alignment."""

from __future__ import annotations

import math

import pytest
import torch

from gateway import blending as B


def lp(*probs: float) -> torch.Tensor:
    p = torch.tensor(probs, dtype=torch.float32)
    return torch.where(p > 0, p.log(), torch.full_like(p, B.NEG_INF))


def test_linear_rule_is_the_weighted_mixture() -> None:
    a, b = lp(0.7, 0.2, 0.1, 0.0), lp(0.1, 0.1, 0.4, 0.4)
    out = B.combine([a, b], [3.0, 1.0], "linear").exp()
    assert torch.allclose(out, torch.tensor([0.55, 0.175, 0.175, 0.1]), atol=1e-6)


def test_loglinear_rule_is_the_normalised_weighted_product() -> None:
    a, b = lp(0.5, 0.3, 0.2), lp(0.2, 0.2, 0.6)
    w = [0.75, 0.25]
    raw = torch.tensor([0.5**0.75 * 0.2**0.25, 0.3**0.75 * 0.2**0.25, 0.2**0.75 * 0.6**0.25])
    assert torch.allclose(B.combine([a, b], w, "loglinear").exp(), raw / raw.sum(), atol=1e-6)


def test_loglinear_vetoes_a_token_one_member_rules_out_and_linear_does_not() -> None:
    a, b = lp(0.5, 0.5, 0.0), lp(0.0, 0.5, 0.5)
    assert B.combine([a, b], [1, 1], "loglinear").exp().tolist() == pytest.approx([0.0, 1.0, 0.0])
    assert B.combine([a, b], [1, 1], "linear").exp().tolist() == pytest.approx([0.25, 0.5, 0.25])


def test_zero_weight_member_is_ignored_and_bad_weights_refused() -> None:
    a, b = lp(0.9, 0.1), lp(0.0, 1.0)
    assert torch.allclose(B.combine([a, b], [1.0, 0.0], "loglinear"), a, atol=1e-6)
    with pytest.raises(ValueError, match=">= 0"):
        B.combine([a, b], [1.0, -0.5])
    with pytest.raises(ValueError, match="> 0"):
        B.combine([a, b], [0.0, 0.0])
    with pytest.raises(ValueError, match="2 distributions but 1 weights"):
        B.combine([a, b], [1.0])
    with pytest.raises(ValueError, match="unknown blend rule"):
        B.combine([a, b], [1.0, 1.0], "max")  # type: ignore[arg-type]


def test_gate_by_entropy_and_margin() -> None:
    sure, unsure = lp(0.97, 0.01, 0.01, 0.01), lp(0.4, 0.35, 0.15, 0.1)
    assert B.entropy(lp(0.5, 0.5)) == pytest.approx(math.log(2))
    assert B.margin(unsure) == pytest.approx(0.05)
    entropy_gate = B.Gate("entropy", 0.5)
    assert not B.gate_open(sure, entropy_gate) and B.gate_open(unsure, entropy_gate)
    margin_gate = B.Gate("margin", 0.3)
    assert not B.gate_open(sure, margin_gate) and B.gate_open(unsure, margin_gate)
    assert B.gate_open(sure, None)


def test_sampling_probs_greedy_temperature_and_top_p() -> None:
    x = lp(0.5, 0.3, 0.15, 0.05)
    assert B.sampling_probs(x, 0.0).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert torch.allclose(B.sampling_probs(x, 1.0), x.exp(), atol=1e-6)
    nucleus = B.sampling_probs(x, 1.0, top_p=0.7)
    assert nucleus.tolist() == pytest.approx([0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0])
    hot = B.sampling_probs(x, 2.0)
    assert float(hot.max()) < 0.5 and float(hot.sum()) == pytest.approx(1.0)


def test_speculative_rule_accepts_with_probability_min_one_p_over_q() -> None:
    p, q = torch.tensor([0.2, 0.8]), torch.tensor([0.6, 0.4])
    assert B.accept(p, q, 1, 0.999)  # p/q > 1: always
    assert B.accept(p, q, 0, 0.33) and not B.accept(p, q, 0, 0.34)  # p/q = 1/3
    assert B.residual(p, q).tolist() == pytest.approx([0.0, 1.0])
    assert B.residual(p, p).tolist() == pytest.approx(p.tolist())  # nothing left over: fall back to p
    one = torch.tensor([0.0, 1.0, 0.0])
    assert B.accept(one, one, 1, 0.0) and not B.accept(one, torch.tensor([1.0, 0.0, 0.0]), 0, 0.0)


def test_speculative_rule_marginal_is_exactly_p() -> None:
    """Σ over drafts: q(x)·min(1, p/q) + P(reject)·residual(x) = p(x), the identity the executor's exactness rests on."""
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        p = torch.softmax(torch.randn(6, generator=g) * 2, -1)
        q = torch.softmax(torch.randn(6, generator=g) * 2, -1)
        keep = torch.minimum(q, p)
        marginal = keep + (1 - keep.sum()) * B.residual(p, q)
        assert torch.allclose(marginal, p, atol=1e-6)


def test_fill_topk_spreads_the_missing_mass_and_union_restricts_support() -> None:
    nan = float("nan")
    a = torch.tensor([math.log(0.6), math.log(0.3), nan, nan])
    filled = B.fill_topk(a)
    assert filled.exp().tolist() == pytest.approx([0.6, 0.3, 0.05, 0.05])
    b = torch.tensor([nan, math.log(0.5), math.log(0.4), nan])
    out = B.blend_topk([a, b], [0.5, 0.5]).exp()
    assert out[3] == 0.0 and float(out.sum()) == pytest.approx(1.0)
    mix = torch.tensor([0.6 + 0.05, 0.3 + 0.5, 0.05 + 0.4]) / 2
    assert out[:3].tolist() == pytest.approx((mix / mix.sum()).tolist())
    full = lp(0.6, 0.3, 0.06, 0.04)
    assert torch.equal(B.fill_topk(full), full)
    assert B.total_variation(full, full) == 0.0
    assert B.total_variation(lp(1.0, 0.0), lp(0.0, 1.0)) == pytest.approx(1.0)


def test_alignment_maps_surfaces_and_sums_duplicates() -> None:
    # member 0: chars; member 1: has "ab" as one token, "a" twice (two ids, one surface), and its own eos id
    al = B.VocabAlignment([[None, B.EOS_KEY, "a", "b"], ["a", "ab", "a", B.EOS_KEY, None]])
    assert al.common == [B.EOS_KEY, "a", "b", "ab"]
    m1 = al.project(1, lp(0.1, 0.3, 0.2, 0.3, 0.1))
    assert m1.exp().tolist() == pytest.approx([0.3, 0.3, 0.0, 0.3])  # the special token's 0.1 drops out
    assert al.token_of[1][al.index_of["a"]] == 0 and al.index_of["b"] not in al.token_of[1]
    assert B.advance_ids([5], "x", "a", 0, lambda s: [9, 9]) == [5, 0]
    assert B.advance_ids([5], "x", "b", None, lambda s: [len(s)]) == [2]
    assert B.common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
