"""The blend sampler's pure core at its edges: gate and top-p boundaries, temperature, batched rules, the speculative
rule's strict inequality and impossible drafts, the top-k fill when the reported mass is already 1, padded vocabularies.
"""

from __future__ import annotations

import math

import pytest
import torch

from gateway import blending as B


def lp(*probs: float) -> torch.Tensor:
    p = torch.tensor(probs, dtype=torch.float32)
    return torch.where(p > 0, p.log(), torch.full_like(p, B.NEG_INF))


# ----------------------------------------------------------------------------------------------- weights and rules
def test_weights_are_normalised_and_nan_is_refused() -> None:
    assert B.normalise_weights([1, 3]) == [0.25, 0.75]
    assert B.normalise_weights([0, 2]) == [0.0, 1.0]
    with pytest.raises(ValueError, match=">= 0"):
        B.normalise_weights([1.0, float("nan")])


def test_rules_work_row_wise_on_batches() -> None:
    a = torch.stack([lp(0.7, 0.2, 0.1), lp(0.1, 0.1, 0.8)])
    b = torch.stack([lp(0.1, 0.1, 0.8), lp(0.5, 0.5, 0.0)])
    for rule in ("linear", "loglinear"):
        batched = B.combine([a, b], [1.0, 3.0], rule)
        for row in range(2):
            assert torch.allclose(batched[row], B.combine([a[row], b[row]], [1.0, 3.0], rule), atol=1e-6)
        assert torch.allclose(batched.exp().sum(-1), torch.ones(2), atol=1e-6)


def test_linear_renormalises_members_that_lost_mass() -> None:
    """A member projected onto a common space may sum to < 1 (dropped special tokens): the blend still sums to 1."""
    a = torch.tensor([0.3, 0.3, 0.0]).log()  # sums to 0.6
    b = lp(0.0, 0.5, 0.5)
    out = B.combine([a, b], [1.0, 1.0], "linear").exp()
    raw = torch.tensor([0.15, 0.4, 0.25])
    assert torch.allclose(out, raw / raw.sum(), atol=1e-6)


def test_loglinear_with_no_shared_token_in_any_row_is_refused() -> None:
    a = torch.stack([lp(0.5, 0.5, 0.0), lp(1.0, 0.0, 0.0)])
    b = torch.stack([lp(0.0, 0.5, 0.5), lp(0.0, 0.0, 1.0)])  # row 1 shares nothing
    with pytest.raises(ValueError, match="share no token"):
        B.combine([a, b], [1, 1], "loglinear")
    assert torch.isfinite(B.combine([a[0], b[0]], [1, 1], "loglinear")).any()


# ----------------------------------------------------------------------------------------------- gate
def test_entropy_of_known_distributions() -> None:
    assert B.entropy(lp(0.25, 0.25, 0.25, 0.25)) == pytest.approx(math.log(4), abs=1e-6)
    assert B.entropy(lp(1.0, 0.0, 0.0)) == 0.0  # -inf entries contribute nothing (not nan)
    p = [0.5, 0.3, 0.2, 0.0]
    assert B.entropy(lp(*p)) == pytest.approx(-sum(x * math.log(x) for x in p if x > 0), abs=1e-6)


def test_the_gate_opens_strictly_past_its_threshold() -> None:
    x = lp(0.6, 0.3, 0.1)
    h, m = B.entropy(x), B.margin(x)
    assert m == pytest.approx(0.3, abs=1e-6)
    assert not B.gate_open(x, B.Gate("entropy", h)) and B.gate_open(x, B.Gate("entropy", h - 1e-3))
    assert not B.gate_open(x, B.Gate("margin", m)) and B.gate_open(x, B.Gate("margin", m + 1e-3))
    with pytest.raises(ValueError, match="unknown gate metric"):
        B.gate_open(x, B.Gate("variance", 0.1))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------- sampling
def test_temperature_sharpens_and_flattens() -> None:
    x = lp(0.5, 0.25, 0.25)
    half = B.sampling_probs(x, 0.5)  # p^2, renormalised
    assert half.tolist() == pytest.approx([0.25 / 0.375, 0.0625 / 0.375, 0.0625 / 0.375])
    double = B.sampling_probs(x, 2.0)  # sqrt(p), renormalised
    s = math.sqrt(0.5) + 2 * math.sqrt(0.25)
    assert double.tolist() == pytest.approx([math.sqrt(0.5) / s, 0.5 / s, 0.5 / s])


def test_greedy_is_one_hot_float32_on_the_argmax() -> None:
    x = torch.tensor([-3.0, -0.1, -2.0], dtype=torch.float64)
    out = B.sampling_probs(x, 0.0, top_p=0.1)
    assert out.dtype == torch.float32 and out.tolist() == [0.0, 1.0, 0.0]


def test_top_p_keeps_tokens_whose_preceding_mass_is_below_top_p() -> None:
    x = lp(0.25, 0.5, 0.25)  # sorted: 0.5 (token 1), 0.25 (token 0, first on the tie), 0.25
    assert B.sampling_probs(x, 1.0, top_p=0.75).tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert B.sampling_probs(x, 1.0, top_p=0.5).tolist() == pytest.approx([0.0, 1.0, 0.0])  # 0.5 is not < 0.5
    assert B.sampling_probs(x, 1.0, top_p=0.51).tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert B.sampling_probs(x, 1.0, top_p=1e-6).tolist() == pytest.approx([0.0, 1.0, 0.0])  # the top token always
    assert B.sampling_probs(x, 1.0, top_p=1.0).tolist() == pytest.approx([0.25, 0.5, 0.25])


def test_pick_draws_from_the_distribution_with_a_generator_and_argmaxes_without() -> None:
    probs = torch.tensor([0.2, 0.5, 0.3])
    assert B.pick(probs, None) == 1
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.tensor([B.pick(probs, g) for _ in range(3000)]), minlength=3) / 3000
    assert torch.allclose(counts, probs, atol=0.03)


# ----------------------------------------------------------------------------------------------- speculative rule
def test_accept_is_strictly_u_below_p_over_q() -> None:
    p, q = torch.tensor([0.25, 0.75]), torch.tensor([0.5, 0.5])
    assert B.accept(p, q, 0, 0.4999) and not B.accept(p, q, 0, 0.5)
    assert B.accept(p, q, 1, 0.9999)


def test_a_draft_q_could_not_produce_is_kept_only_if_p_allows_it() -> None:
    q = torch.tensor([1.0, 0.0, 0.0])
    assert B.accept(torch.tensor([0.5, 0.5, 0.0]), q, 1, 0.99)
    assert not B.accept(torch.tensor([0.5, 0.5, 0.0]), q, 2, 0.0)


def test_residual_is_the_normalised_positive_part() -> None:
    p, q = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.3, 0.5])
    assert B.residual(p, q).tolist() == pytest.approx([1.0, 0.0, 0.0])
    p, q = torch.tensor([0.4, 0.4, 0.2]), torch.tensor([0.1, 0.3, 0.6])
    assert B.residual(p, q).tolist() == pytest.approx([0.3 / 0.4, 0.1 / 0.4, 0.0])
    tiny = p + torch.tensor([1e-14, -1e-14, 0.0])  # p ≈ q: nothing left over, fall back to p
    assert torch.equal(B.residual(p, tiny.to(torch.float64)), p)


# ----------------------------------------------------------------------------------------------- top-k union
def test_fill_topk_when_the_reported_mass_is_already_one() -> None:
    nan = float("nan")
    a = torch.tensor([math.log(0.5), math.log(0.5), nan])
    filled = B.fill_topk(a)
    assert filled[2] == B.NEG_INF and filled[:2].exp().tolist() == pytest.approx([0.5, 0.5])
    assert torch.isnan(a[2])  # the input is not modified


def test_fill_topk_spreads_the_tail_evenly_over_every_unreported_token() -> None:
    nan = float("nan")
    a = torch.tensor([math.log(0.7), nan, nan, nan, math.log(0.1)])
    assert B.fill_topk(a).exp().tolist() == pytest.approx([0.7, 0.2 / 3, 0.2 / 3, 0.2 / 3, 0.1])


def test_union_support_is_the_reported_tokens() -> None:
    nan = float("nan")
    a = torch.tensor([0.0, nan, math.log(0.5), nan])
    b = torch.tensor([nan, nan, math.log(0.25), math.log(0.5)])
    assert B.union_support([a, b]).tolist() == [True, False, True, True]


def test_union_support_ignores_impossible_tokens() -> None:
    nan = float("nan")
    a = torch.tensor([0.0, nan, B.NEG_INF, nan])
    b = torch.tensor([nan, nan, B.NEG_INF, math.log(0.5)])
    assert B.union_support([a, b]).tolist() == [True, False, False, True]


def test_blend_topk_is_exact_when_every_token_is_reported() -> None:
    a, b = lp(0.6, 0.3, 0.1), lp(0.2, 0.2, 0.6)
    for rule in ("linear", "loglinear"):
        assert torch.allclose(B.blend_topk([a, b], [1, 2], rule), B.combine([a, b], [1, 2], rule), atol=1e-6)


def test_total_variation_is_half_the_l1_distance() -> None:
    assert B.total_variation(lp(0.5, 0.5, 0.0), lp(0.25, 0.25, 0.5)) == pytest.approx(0.5)


# ----------------------------------------------------------------------------------------------- alignment
def test_projection_drops_padded_ids_and_unmapped_tokens_are_impossible() -> None:
    al = B.VocabAlignment([["a", "b", None], ["b", "c"]])
    assert al.size == 3 and al.common == ["a", "b", "c"]
    # member 0's logits are padded past its 3 tokens: the padding's mass is lost, not wrapped around
    out = al.project(0, lp(0.4, 0.2, 0.1, 0.3)).exp()
    assert out.tolist() == pytest.approx([0.4, 0.2, 0.0])
    m1 = al.project(1, lp(0.75, 0.25))
    assert m1[0] == B.NEG_INF and m1.exp().tolist() == pytest.approx([0.0, 0.75, 0.25])


def test_token_of_is_the_first_token_with_a_surface() -> None:
    al = B.VocabAlignment([["x", "y", "x", "y"]])
    assert al.token_of[0] == {al.index_of["x"]: 0, al.index_of["y"]: 1}
    assert al.maps[0].tolist() == [0, 1, 0, 1]


def test_common_prefix_stops_at_the_first_difference() -> None:
    assert B.common_prefix([1, 2, 3], [1, 9, 3]) == 1
    assert B.common_prefix([], [1]) == 0 and B.common_prefix([4, 5], [4, 5]) == 2


def test_a_two_token_vocabulary_has_a_margin() -> None:
    assert B.margin(lp(0.7, 0.3)) == pytest.approx(0.4, abs=1e-6)
    assert B.gate_open(lp(0.55, 0.45), B.Gate("margin", 0.2))


def test_a_one_member_top_k_blend_is_that_member_on_its_reported_tokens() -> None:
    nan = float("nan")
    a = torch.tensor([math.log(0.6), nan, math.log(0.2), nan])
    out = B.blend_topk([a], [1.0]).exp()
    assert out.tolist() == pytest.approx([0.75, 0.0, 0.25, 0.0])


def test_pick_with_a_seeded_generator_ignores_the_global_rng() -> None:
    probs = torch.full((50,), 1 / 50)

    def draws(seed: int) -> list[int]:
        g = torch.Generator().manual_seed(7)
        with torch.random.fork_rng():  # restored afterwards: other tests keep their global RNG
            torch.manual_seed(seed)  # the global RNG differs between the two runs
            return [B.pick(probs, g) for _ in range(20)]

    assert draws(1) == draws(2)
