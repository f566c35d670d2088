"""ccfv.models.members: the workflow's external bank members (bank.external), on the tiny MeshNet of
test_meshnet.py."""
from __future__ import annotations

import json

import pytest
import torch

from ccfv.bank.model_ids import model_architecture, model_id_pattern, model_source, parse_model_id
from ccfv.models import ModelError
from ccfv.models.members import (
    ExternalMember,
    detect_format,
    external_member,
    head_excluded_parameter_count,
    member_names,
    write_member_card,
)
from tests.models.test_meshnet import write_tiny_model


def test_detect_format_names_a_meshnet_and_nothing_else(tmp_path):
    mesh = write_tiny_model(tmp_path / "mesh")
    assert detect_format(mesh) == "meshnet"
    (tmp_path / "notes.txt").write_text("not a model")
    assert detect_format(tmp_path / "notes.txt") is None
    assert detect_format(tmp_path / "missing") is None
    assert detect_format(tmp_path) is None  # a folder of no format


def test_member_ids_parse_as_bank_ids_and_match_the_wildcard():
    external = {"model18cls": {"path": "x"}, "hippodeep": {"path": "y", "random_copy": False}}
    ids = member_names(external)
    assert ids == ["model18cls-released", "model18cls-random", "hippodeep-released"]
    assert parse_model_id("model18cls-released") == ("model18cls", "released", None)
    assert model_source("model18cls-random") is None and model_architecture("model18cls-random") == "model18cls"
    import re

    pattern = re.compile(model_id_pattern(["unet"], list(external)))
    assert all(pattern.fullmatch(m) for m in [*ids, "unet-random", "unet-Task91_SynthLiver"])
    assert not pattern.fullmatch("unet-released") and not pattern.fullmatch("other-released")
    with pytest.raises(ValueError, match="snapshot"):
        parse_model_id("model18cls-released@5")


def test_external_member_params_and_loading(tmp_path):
    mesh = write_tiny_model(tmp_path / "mesh")
    external = {"tiny": {"path": str(mesh), "patch_size": [8, 8, 12]}}
    released = external_member("tiny-released", external, seed=3)
    random = external_member("tiny-random", external, seed=3)
    assert released == {"name": "tiny-released", "path": str(mesh), "random_seed": None, "patch_size": [8, 8, 12]}
    assert random["random_seed"] == 3
    with pytest.raises(ValueError, match="no member"):
        external_member("other-random", external, seed=0)
    a = ExternalMember.from_mapping(released).load()
    b = ExternalMember.from_mapping(random).load()
    assert a.name == "tiny-released" and b.name == "tiny-random" and a.patch_size == b.patch_size == [8, 8, 12]
    weights = [(p, q) for p, q in zip(a.network.parameters(), b.network.parameters()) if p.dim() > 1]
    assert weights and not any(torch.equal(p, q) for p, q in weights)  # the copy holds no trained weight
    again = ExternalMember.from_mapping(random).load()
    assert all(torch.equal(p, q) for p, q in zip(b.network.parameters(), again.network.parameters()))  # seeded
    # the head is left out of the count, and the copy counts the same
    head = dict(a.network.named_modules())[a.details["head"]]
    total = sum(p.numel() for p in a.network.parameters())
    assert head_excluded_parameter_count(a) == total - sum(p.numel() for p in head.parameters())
    assert head_excluded_parameter_count(b) == head_excluded_parameter_count(a)


def test_a_patch_or_random_copy_for_another_format_is_refused(tmp_path):
    with pytest.raises(ModelError, match="not a model of a known format"):
        ExternalMember("x-released", tmp_path).load()


def test_member_card_records_what_the_results_stage_needs(tmp_path):
    mesh = write_tiny_model(tmp_path / "mesh")
    external = {"tiny": {"path": str(mesh), "source_cases": 9}}
    card = write_member_card(external_member("tiny-released", external, 0), tmp_path / "r.json", 9)
    random = write_member_card(external_member("tiny-random", external, 0), tmp_path / "x.json", 9)
    assert json.loads((tmp_path / "r.json").read_text()) == card
    assert card["format"] == "meshnet" and card["source_cases"] == 9 and card["random_seed"] is None
    assert random["source_cases"] is None and random["random_seed"] == 0
    assert random["parameter_count"] == card["parameter_count"] > 0
