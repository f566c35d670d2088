"""Tests for ccfv.scores.metrics.ccfv: the hyperspherical energy and feature variety (eq. 3-4), class
consistency (eq. 2) and the CC-FV score (eq. 5) against slow references, plus their invariances."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ccfv.scores.metrics.ccfv import (
    HSE_DISTANCE_FLOOR,
    ccfv_score,
    ccfv_terms,
    class_consistency,
    class_separation,
    discriminative_ccfv_score,
    feature_variety,
    hyperspherical_energy,
)
from ccfv.scores.metrics.released import class_consistency_released, feature_variety_released

from .references import (
    RTOL,
    nuclear_w2,
    random_cases,
    random_layers,
    slow_ccfv,
    slow_class_consistency_eq2,
    slow_feature_variety,
    slow_hse,
    slow_w2,
)

# --------------------------------------------------------------------------------------------------
# hyperspherical_energy (eq. 3)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("s", [1, 2, 0.5, 0])
def test_hse_matches_loop_reference(rng, s):
    v = rng.normal(size=(25, 6))
    assert hyperspherical_energy(v, s) == pytest.approx(slow_hse(v, s), rel=RTOL)
    assert hyperspherical_energy(v, s, reduction="mean") == pytest.approx(slow_hse(v, s, "mean"), rel=RTOL)
    with pytest.raises(ValueError, match="reduction"):
        hyperspherical_energy(v, s, reduction="median")


def test_hse_hand_computed_and_log_form():
    two_points = np.array([[0.0, 0.0], [2.0, 0.0]])
    assert hyperspherical_energy(two_points, 1) == pytest.approx(1.0)  # 2 ordered pairs * 1/2
    assert hyperspherical_energy(two_points, 2) == pytest.approx(0.5)
    assert hyperspherical_energy(two_points, 0) == pytest.approx(-2 * math.log(2.0))
    triangle = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])  # sides 3, 4, 5
    assert hyperspherical_energy(triangle, 0) == pytest.approx(-2 * math.log(60.0))
    assert hyperspherical_energy(triangle, 1) == pytest.approx(2 * (1 / 3 + 1 / 4 + 1 / 5))


def test_hse_is_invariant_to_row_permutation(rng):
    v = rng.normal(size=(30, 4))
    perm = rng.permutation(30)
    assert hyperspherical_energy(v[perm]) == pytest.approx(hyperspherical_energy(v), rel=1e-12)


def test_hse_lower_for_dispersed_points(rng):
    v = rng.normal(size=(30, 4))
    assert hyperspherical_energy(2.0 * v) == pytest.approx(hyperspherical_energy(v) / 2, rel=1e-12)


def test_hse_coincident_points_are_finite():
    v = np.array([[1.0, 1.0], [1.0, 1.0], [2.0, 1.0]])
    energy = hyperspherical_energy(v, 1)
    assert np.isfinite(energy)
    assert energy == pytest.approx(2 * (1 / HSE_DISTANCE_FLOOR + 1 + 1))


def test_hse_rejects_bad_inputs(rng):
    with pytest.raises(ValueError, match="s >= 0"):
        hyperspherical_energy(rng.normal(size=(5, 2)), -1)
    with pytest.raises(ValueError, match="at least 2"):
        hyperspherical_energy(rng.normal(size=(1, 2)))


# --------------------------------------------------------------------------------------------------
# feature_variety (eq. 4)
# --------------------------------------------------------------------------------------------------


def test_feature_variety_matches_loop_reference(rng):
    cases_global = [rng.normal(size=(L, 5)) for L in (8, 12, 20)]
    assert feature_variety(cases_global) == pytest.approx(
        slow_feature_variety(cases_global), rel=RTOL
    )
    assert feature_variety(cases_global, 2) == pytest.approx(
        slow_feature_variety(cases_global, 2), rel=RTOL
    )
    for s in (1, 2):
        assert feature_variety(cases_global, s, energy="sum") == pytest.approx(
            slow_feature_variety(cases_global, s, energy="sum"), rel=RTOL
        )


def test_feature_variety_hand_computed():
    near = np.array([[0.0], [2.0]])  # E_1 = 1 (sum over the 2 ordered pairs), 1/2 (their mean)
    far = np.array([[0.0], [4.0]])  # E_1 = 1/2, 1/4
    assert feature_variety([near, far], energy="sum") == pytest.approx((1.0 + 2.0) / 2)
    assert feature_variety([near, far]) == pytest.approx((2.0 + 4.0) / 2)


def test_feature_variety_higher_when_features_spread(rng):
    cases_global = [rng.normal(size=(10, 3)) for _ in range(3)]
    spread = [3.0 * v for v in cases_global]
    assert feature_variety(spread) == pytest.approx(3.0 * feature_variety(cases_global), rel=1e-12)


def test_feature_variety_rejects_empty():
    with pytest.raises(ValueError, match="at least one case"):
        feature_variety([])


# --------------------------------------------------------------------------------------------------
# class_consistency (eq. 2)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("distance", ["w2", "kl", "bhattacharyya"])
def test_class_consistency_matches_equation_2_when_all_classes_present(rng, distance):
    cases = random_cases(rng, n_cases=4, classes=(1, 2, 3), d=3)
    assert class_consistency(cases, distance=distance) == pytest.approx(
        slow_class_consistency_eq2(cases, distance), rel=RTOL
    )


def test_class_consistency_default_is_w2(rng):
    cases = random_cases(rng, n_cases=3, classes=(1,), d=2)
    assert class_consistency(cases) == class_consistency(cases, distance="w2")


def test_class_consistency_skips_missing_classes_with_per_class_normaliser():
    # One-dimensional sets [mu - h, mu + h] have mean mu and ddof=1 std h * sqrt(2); in 1-D,
    # W2 = sqrt((mu_a - mu_b)^2 + (std_a - std_b)^2).
    def col(*values):
        return np.array(values, dtype=float)[:, None]

    cases = [
        {1: col(0, 2), 2: col(10, 12), 3: col(5.0)},  # class 3: one sample, invalid
        {1: col(3, 5), 2: col(10, 14)},  # class 3 absent
        {1: col(0, 4), 3: col(1, 2, 3)},  # class 2 absent
    ]
    # class 1: W2(0,1) = 3, W2(0,2) = sqrt(1 + 2), W2(1,2) = sqrt(4 + 2); 6 ordered pairs
    class_1 = (3 + math.sqrt(3) + math.sqrt(6)) / 3
    # class 2: only cases 0 and 1 are valid: W2 = sqrt(1 + 2); 2 ordered pairs
    class_2 = math.sqrt(3)
    # class 3: only case 2 is valid -> no pair -> contributes nothing
    assert class_consistency(cases) == pytest.approx(class_1 + class_2, rel=1e-9)
    # the literal 1/(N(N-1)) normaliser would give this different number instead
    naive = (2 * (3 + math.sqrt(3) + math.sqrt(6)) + 2 * math.sqrt(3)) / 6
    assert abs(class_consistency(cases) - naive) > 0.5


def test_class_consistency_lower_for_consistent_features(rng):
    base = rng.normal(size=(15, 3))
    consistent = [{1: base + 0.01 * rng.normal(size=base.shape)} for _ in range(4)]
    inconsistent = [{1: base * (1 + i) + i} for i in range(4)]
    assert class_consistency(consistent) < class_consistency(inconsistent)


def test_class_consistency_errors(rng):
    with pytest.raises(ValueError, match="no valid pair"):
        class_consistency([{1: rng.normal(size=(5, 2))}, {2: rng.normal(size=(5, 2))}])
    with pytest.raises(ValueError, match="no valid pair"):
        class_consistency([{1: rng.normal(size=(5, 2))}])
    with pytest.raises(ValueError, match="distance"):
        class_consistency(random_cases(rng, 2, (1,), 2), distance="euclid")
    with pytest.raises(ValueError, match="dimensions"):
        class_consistency([{1: rng.normal(size=(5, 2))}, {1: rng.normal(size=(5, 3))}])
    with pytest.raises(TypeError, match="mapping"):
        class_consistency([rng.normal(size=(5, 2)), rng.normal(size=(5, 2))])


# --------------------------------------------------------------------------------------------------
# ccfv_score (eq. 5)
# --------------------------------------------------------------------------------------------------


def test_ccfv_score_matches_equation_5(rng):
    layers = random_layers(rng)
    score = ccfv_score(layers)
    assert isinstance(score, float)
    assert score == pytest.approx(slow_ccfv(layers), rel=RTOL)


def test_ccfv_score_ablation_switches(rng):
    layers = random_layers(rng)
    log_fv = [math.log(slow_feature_variety(layer["global"])) for layer in layers]
    log_cc = [math.log(slow_class_consistency_eq2(layer["cases"])) for layer in layers]
    full = ccfv_score(layers)
    assert full == pytest.approx(np.mean(log_fv) - np.mean(log_cc), rel=RTOL)
    assert ccfv_score(layers, use_consistency=False) == pytest.approx(np.mean(log_fv), rel=RTOL)
    assert ccfv_score(layers, use_variety=False) == pytest.approx(-np.mean(log_cc), rel=RTOL)
    assert ccfv_score(layers, single_scale=True) == pytest.approx(log_fv[-1] - log_cc[-1], rel=RTOL)
    assert ccfv_score(layers, single_scale=True) == ccfv_score(layers[-1:])
    for distance in ("kl", "bhattacharyya"):
        expected = slow_ccfv(layers, distance)
        assert ccfv_score(layers, distance=distance) == pytest.approx(expected, rel=RTOL)
        assert abs(expected - full) > 1e-3
    with pytest.raises(ValueError, match="at least one"):
        ccfv_score(layers, use_consistency=False, use_variety=False)


def test_ccfv_score_reads_only_needed_keys(rng):
    layers = random_layers(rng)
    only_global = [{"global": layer["global"]} for layer in layers]
    only_cases = [{"cases": layer["cases"]} for layer in layers]
    assert ccfv_score(only_global, use_consistency=False) == ccfv_score(
        layers, use_consistency=False
    )
    assert ccfv_score(only_cases, use_variety=False) == ccfv_score(layers, use_variety=False)
    with pytest.raises(ValueError, match="'cases'"):
        ccfv_score(only_global)


def test_ccfv_score_is_invariant_to_feature_scale_with_s1_w2(rng):
    layers = random_layers(rng, n_layers=2)
    scaled = [
        {
            "cases": [{k: 5.0 * x for k, x in case.items()} for case in layer["cases"]],
            "global": [5.0 * v for v in layer["global"]],
        }
        for layer in layers
    ]
    assert ccfv_score(scaled) == pytest.approx(ccfv_score(layers), rel=1e-9)


def test_ccfv_score_higher_for_consistent_classes(rng):
    global_feats = [rng.normal(size=(10, 3)) for _ in range(4)]
    base = rng.normal(size=(12, 3))
    good = {"cases": [{1: base + 0.05 * rng.normal(size=base.shape)} for _ in range(4)]}
    bad = {"cases": [{1: base * (1 + i) + 2 * i} for i in range(4)]}
    assert ccfv_score([{**good, "global": global_feats}]) > ccfv_score(
        [{**bad, "global": global_feats}]
    )


def test_ccfv_score_rejects_nonpositive_variety():
    # s = 0 with far-apart points gives a negative energy, so F_v < 0 and log F_v is undefined.
    layer = {"global": [np.array([[0.0], [10.0]])] * 2}
    with pytest.raises(ValueError, match="F_v"):
        ccfv_score([layer], use_consistency=False, s=0)


def test_class_consistency_rank_deficient_cases_match_nuclear_reference(rng):
    cases = [{1: rng.normal(loc=0.3 * i, size=(4, 12))} for i in range(5)]  # n = 4 < d = 12
    expected = sum(
        nuclear_w2(cases[i][1], cases[j][1]) for i in range(5) for j in range(5) if i != j
    ) / 20
    assert class_consistency(cases) == pytest.approx(expected, rel=1e-10)


def test_class_consistency_constant_channel_is_finite_and_changes_nothing(rng):
    cases = random_cases(rng, n_cases=4, classes=(1, 2), d=3)
    padded = [
        {k: np.hstack([x, np.full((len(x), 1), 7.0)]) for k, x in case.items()} for case in cases
    ]
    value = class_consistency(padded)
    assert np.isfinite(value)
    assert value == pytest.approx(class_consistency(cases), rel=1e-10)
    for distance in ("kl", "bhattacharyya"):
        assert np.isfinite(class_consistency(padded, distance=distance))


def test_class_consistency_duplicated_channel_matches_nuclear_reference(rng):
    cases = []
    for i in range(4):
        x = rng.normal(loc=0.2 * i, size=(10, 3))
        cases.append({1: np.hstack([x, x[:, :1]])})  # rank 3 covariance in 4 dimensions
    expected = sum(
        nuclear_w2(cases[i][1], cases[j][1]) for i in range(4) for j in range(4) if i != j
    ) / 12
    value = class_consistency(cases)
    assert np.isfinite(value)
    assert value == pytest.approx(expected, rel=1e-10)


def test_class_consistency_zero_covariance_class(rng):
    # every sample of the class identical within a case: covariance 0, W2 = distance of means
    cases = [{1: np.tile(rng.normal(size=(1, 3)), (5, 1))} for _ in range(3)]
    means = [case[1][0] for case in cases]
    expected = sum(
        np.linalg.norm(means[i] - means[j]) for i in range(3) for j in range(3) if i != j
    ) / 6
    assert class_consistency(cases) == pytest.approx(expected, rel=1e-12)


def test_single_case_raises_everywhere(rng):
    one = random_cases(rng, n_cases=1, classes=(1, 2), d=3)
    with pytest.raises(ValueError, match="no valid pair"):
        class_consistency(one)
    with pytest.raises(ValueError, match="no valid pair"):
        ccfv_score([{"cases": one, "global": [rng.normal(size=(6, 3))]}])
    with pytest.raises(ValueError, match="at least 2 cases"):
        class_consistency_released(one)
    with pytest.raises(ValueError, match="at least 2 cases"):
        feature_variety_released(rng.normal(size=(1, 3)))


def test_class_consistency_invariant_to_case_order_and_channel_permutation(rng):
    cases = random_cases(rng, n_cases=6, classes=(1, 2), d=5)
    cases[4].pop(1)
    value = class_consistency(cases)
    order = rng.permutation(6)
    assert class_consistency([cases[i] for i in order]) == pytest.approx(value, rel=1e-12)
    channels = rng.permutation(5)
    permuted = [{k: x[:, channels] for k, x in case.items()} for case in cases]
    assert class_consistency(permuted) == pytest.approx(value, rel=1e-10)
    assert class_consistency([{k: 4.0 * x for k, x in c.items()} for c in cases]) == pytest.approx(
        4.0 * value, rel=1e-10
    )


def test_ccfv_score_invariant_to_case_order_and_channel_permutation(rng):
    layers = random_layers(rng, n_layers=2)
    value = ccfv_score(layers)
    shuffled = []
    for layer in layers:
        order = rng.permutation(len(layer["cases"]))
        d = layer["global"][0].shape[1]
        channels = rng.permutation(d)
        shuffled.append(
            {
                "cases": [
                    {k: x[:, channels] for k, x in layer["cases"][i].items()} for i in order
                ],
                "global": [layer["global"][i][:, channels] for i in order],
            }
        )
    assert ccfv_score(shuffled) == pytest.approx(value, rel=1e-10)


@pytest.mark.parametrize("s", [2.0, 0.5])
def test_ccfv_score_common_scaling_shifts_by_s_minus_1_log_c(rng, s):
    layers = random_layers(rng, n_layers=2)
    c = 3.0
    scaled = [
        {
            "cases": [{k: c * x for k, x in case.items()} for case in layer["cases"]],
            "global": [c * v for v in layer["global"]],
        }
        for layer in layers
    ]
    log_c = math.log(c)
    assert ccfv_score(scaled, s=s) == pytest.approx(ccfv_score(layers, s=s) + (s - 1) * log_c)
    assert ccfv_score(scaled, s=s, use_consistency=False) == pytest.approx(
        ccfv_score(layers, s=s, use_consistency=False) + s * log_c
    )
    assert ccfv_score(scaled, use_variety=False) == pytest.approx(
        ccfv_score(layers, use_variety=False) - log_c
    )


# --------------------------------------------------------------------------------------------------
# Comparable across architectures (issue 24): the score must not depend on how many voxels or layers a
# model's sampling keeps
# --------------------------------------------------------------------------------------------------


def same_distribution_layers(rng, n_global, d=6, n_cases=6):
    """Layers whose features all come from one distribution, keeping ``n_global[l]`` global voxels per case."""
    layers = []
    for n in n_global:
        cases = [{1: rng.normal(size=(30, d)), 2: rng.normal(loc=2.0, size=(30, d))} for _ in range(n_cases)]
        layers.append({"cases": cases, "global": [rng.normal(size=(n, d)) for _ in range(n_cases)]})
    return layers


def test_mean_energy_score_does_not_depend_on_the_number_of_sampled_voxels():
    """The same features subsampled to L = 25 or 200 voxels: the same expected score with the mean energy;
    eq. 3's sum gives the smaller sample log(200*199 / (25*24)) = 4.28 nats more."""
    rng = np.random.default_rng(7)
    few, many = [], []
    few_sum, many_sum = [], []
    for _ in range(20):
        full = same_distribution_layers(rng, [200])
        sub = [{**full[0], "global": [v[:25] for v in full[0]["global"]]}]
        few.append(ccfv_score(sub, use_consistency=False))
        many.append(ccfv_score(full, use_consistency=False))
        few_sum.append(ccfv_score(sub, use_consistency=False, energy="sum"))
        many_sum.append(ccfv_score(full, use_consistency=False, energy="sum"))
    assert abs(np.mean(few) - np.mean(many)) < 0.05
    assert np.mean(few_sum) - np.mean(many_sum) == pytest.approx(math.log(200 * 199 / (25 * 24)), abs=0.05)


def test_one_more_hooked_layer_gains_nothing():
    """A model hooking four stages sampled 25/50/100/200 (UNETR's ratios) against one hooking three sampled
    50/100/200 (the U-Net's), features of one distribution: equal expected scores with the mean energy; the
    sum hands the four-stage model the +0.70 nats issue 24 measured on the study."""
    rng = np.random.default_rng(11)
    three, four, three_sum, four_sum = [], [], [], []
    for _ in range(15):
        unet = same_distribution_layers(rng, [50, 100, 200])
        unetr = same_distribution_layers(rng, [25, 50, 100, 200])
        three.append(ccfv_score(unet))
        four.append(ccfv_score(unetr))
        three_sum.append(ccfv_score(unet, energy="sum"))
        four_sum.append(ccfv_score(unetr, energy="sum"))
    assert abs(np.mean(four) - np.mean(three)) < 0.05
    offset = np.mean([math.log(n * (n - 1)) for n in (50, 100, 200)]) - np.mean(
        [math.log(n * (n - 1)) for n in (25, 50, 100, 200)])
    assert offset == pytest.approx(0.70, abs=0.01)
    assert np.mean(four_sum) - np.mean(three_sum) == pytest.approx(offset, abs=0.05)


def test_ccfv_terms_add_up_to_the_score(rng):
    layers = random_layers(rng)
    terms = ccfv_terms(layers)
    assert ccfv_score(layers) == np.mean([t["log_variety"] + t["neg_log_consistency"] for t in terms])
    assert [set(t) for t in ccfv_terms(layers, use_variety=False)] == [{"neg_log_consistency"}] * len(layers)


def test_varied_global_voxels_leave_constant_input_out(rng):
    """``global_voxels="varied"``: F_v over the voxels whose input varies, as if the others were never sampled."""
    layers = random_layers(rng)
    varied = []
    for layer in layers:
        std = [np.where(np.arange(len(v)) % 2 == 0, 0.0, 1.0) for v in layer["global"]]  # every other voxel flat
        varied.append({**layer, "global_input_std": std})
    kept = [{**layer, "global": [v[1::2] for v in layer["global"]]} for layer in layers]
    assert ccfv_score(varied, global_voxels="varied") == pytest.approx(ccfv_score(kept), rel=1e-12)
    with pytest.raises(ValueError, match="global_input_std"):
        ccfv_score(layers, global_voxels="varied")
    flat = [{**layer, "global_input_std": [np.zeros(len(v)) for v in layer["global"]]} for layer in layers]
    with pytest.raises(ValueError, match="no case has 2 global voxels"):
        ccfv_score(flat, global_voxels="varied")
    with pytest.raises(ValueError, match="global_voxels"):
        ccfv_score(layers, global_voxels="some")


# --------------------------------------------------------------------------------------------------
# CC-FV-D (pre-registered, docs/preregistration.md)
# --------------------------------------------------------------------------------------------------


def test_class_separation_against_a_loop_reference(rng):
    cases = [{1: rng.normal(size=(12, 3)), 2: rng.normal(loc=1.0, size=(12, 3))}, {1: rng.normal(size=(12, 3))}]
    background = [rng.normal(loc=-1.0, size=(20, 3)), rng.normal(loc=-1.0, size=(20, 3))]
    expected = (slow_w2(cases[0][1], background[0]) + slow_w2(cases[1][1], background[1])) / 2 \
        + slow_w2(cases[0][2], background[0])
    assert class_separation(cases, background) == pytest.approx(expected, rel=1e-8)
    with pytest.raises(ValueError, match="1 background sets"):
        class_separation(cases, background[:1])


def test_discriminative_ccfv_is_the_mean_log_ratio_and_scale_invariant(rng):
    layers = random_layers(rng)
    for layer in layers:
        d = layer["global"][0].shape[1]
        layer["background"] = [rng.normal(loc=-2.0, size=(15, d)) for _ in layer["cases"]]
    expected = np.mean([math.log(class_separation(layer["cases"], layer["background"]))
                        - math.log(class_consistency(layer["cases"])) for layer in layers])
    assert discriminative_ccfv_score(layers) == pytest.approx(expected, rel=1e-12)
    scaled = [{"cases": [{k: 5.0 * v for k, v in c.items()} for c in layer["cases"]],
               "background": [5.0 * b for b in layer["background"]]} for layer in layers]
    assert discriminative_ccfv_score(scaled) == pytest.approx(discriminative_ccfv_score(layers), rel=1e-9)
    # classes further from the background score higher
    apart = [{**layer, "background": [b - 10.0 for b in layer["background"]]} for layer in layers]
    assert discriminative_ccfv_score(apart) > discriminative_ccfv_score(layers)
    with pytest.raises(ValueError, match="background"):
        discriminative_ccfv_score([{"cases": layers[0]["cases"]}])
