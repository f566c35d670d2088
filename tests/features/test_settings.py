"""ccfv.features.settings.model_sampling: the sampling settings one bank model's features are sampled with, as
the workflow's rules pass them (rules/common.smk ``sampling_for``) and benchmarks/budget_rankings.py resamples."""
from __future__ import annotations

from ccfv.features.settings import model_sampling

SAMPLING = {"seed": 0, "total": 100, "layer_ratios": {"unet": [0.5, 1.0], "unetr": [0.25, 0.5, 1.0],
                                                       "model18cls": [1.0, 1.0, 1.0]}, "window_budget": None}


def test_ratios_are_the_architectures_and_a_null_budget_is_left_out():
    assert model_sampling(SAMPLING, "unet-Task91_SynthLiver") == {"seed": 0, "total": 100, "layer_ratios": [0.5, 1.0]}
    assert model_sampling(SAMPLING, "unetr-random")["layer_ratios"] == [0.25, 0.5, 1.0]
    # an external member and its random copy share the released model's entry; without one: the format's default
    assert model_sampling(SAMPLING, "model18cls-random")["layer_ratios"] == [1.0, 1.0, 1.0]
    assert model_sampling(SAMPLING, "hippodeep-released")["layer_ratios"] is None


def test_a_plain_list_is_every_architectures_and_a_budget_is_kept():
    settings = model_sampling({**SAMPLING, "layer_ratios": [0.5, 1.0], "window_budget": 4}, "unet-random")
    assert settings["layer_ratios"] == [0.5, 1.0] and settings["window_budget"] == 4
    assert SAMPLING["window_budget"] is None and isinstance(SAMPLING["layer_ratios"], dict)  # the input is not changed
