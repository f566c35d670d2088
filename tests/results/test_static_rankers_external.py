"""ccfv.results.static_rankers with external members (bank.external): released counts as pretrained, each
name is its own architecture, and "larger source dataset first" needs the authors' training cases."""
from __future__ import annotations

import json

from ccfv.results.static_rankers import (
    baseline_scores,
    external_source_sizes,
    parameter_counts_of,
    static_rankers_note,
)

BANK = ["mesh-random", "mesh-released", "unet-Task91_SynthLiver", "unet-random"]


def test_released_members_are_pretrained_and_their_own_architecture():
    scores = baseline_scores(BANK, {"Task91_SynthLiver": 12, "mesh-released": 100})
    assert scores["pretrained_first"] == [0.0, 1.0, 1.0, 0.0]
    # two members each: the tie goes to the alphabetically first architecture, the external name "mesh"
    assert scores["same_architecture_first"] == [1.0, 1.0, 0.0, 0.0]
    assert baseline_scores([*BANK, "unet-Task93_SynthPancreas"], {"Task91_SynthLiver": 12, "Task93_SynthPancreas": 9,
                           "mesh-released": 100})["same_architecture_first"] == [0.0, 0.0, 1.0, 1.0, 1.0]
    assert scores["larger_source_first"] == [0.0, 100.0, 12.0, 0.0]


def test_larger_source_first_does_not_apply_without_the_authors_count():
    scores = baseline_scores(BANK, {"Task91_SynthLiver": 12})
    assert "larger_source_first" not in scores and "pretrained_first" in scores
    records = [{"target": "Task94_SynthSpleen", "model": m} for m in BANK]
    note = static_rankers_note(records, ["Task94_SynthSpleen"], {"Task91_SynthLiver": 12})
    assert "does not apply" in note and "mesh-released" in note


def test_member_cards_give_parameter_counts_and_source_sizes(tmp_path):
    card = tmp_path / "mesh-released" / "member.json"
    card.parent.mkdir()
    card.write_text(json.dumps({"parameter_count": 1234, "source_cases": 50}))
    copy = tmp_path / "mesh-random" / "member.json"
    copy.parent.mkdir()
    copy.write_text(json.dumps({"parameter_count": 1234, "source_cases": None}))
    files = {"mesh-released": card, "mesh-random": copy}
    assert parameter_counts_of(files) == {"mesh-released": 1234, "mesh-random": 1234}
    assert external_source_sizes(files) == {"mesh-released": 50}
