"""Import hygiene: a workflow job imports only what it runs (issue 16, item 1).

Most demo jobs last seconds, so what a job imports is a large share of its cost: torch about 1.5 s,
nnU-Net's trainer module 4 s more (it pulls ``torch._dynamo``, seaborn, pandas and scikit-learn at module
level), ``import monai`` about 3 s beyond torch (its package initialiser imports every submodule, and
torchvision with them). Those are paid by the jobs that need them (training, UNETR jobs) and must not
leak into the others. Each check runs in a fresh interpreter and reads ``sys.modules`` afterwards, so a
lazy import inside a function counts as much as one at the top of a module.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))

#: Heavy packages no job loads unless it uses them (what each costs: module docstring).
HEAVY = ("torch", "torch._dynamo", "monai", "torchvision", "seaborn", "matplotlib", "sklearn", "pandas",
         "nnunetv2.training.nnUNetTrainer.nnUNetTrainer")
#: Scripts that draw figures: the plotting stack is what they run.
PLOTTING_SCRIPTS = {"figures.py", "feature_tsne.py"}


def loaded_after(code: str, cwd: Path = ROOT) -> set[str]:
    """The HEAVY modules in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = f"\nimport json, sys\nprint(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))\n"
    result = subprocess.run([sys.executable, "-c", code + probe], cwd=cwd, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def module_level_imports(script: Path) -> str:
    """The import statements a script runs at module level, i.e. before its ``__main__`` guard. nnU-Net's
    "spawn" worker processes import the job's script again, so every worker pays for these too."""
    tree = ast.parse(script.read_text())
    return "\n".join(ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)))


def test_workflow_scripts_start_without_the_heavy_stack():
    # One interpreter for all scripts (a fresh one each would cost the suite a minute); a failure names
    # the heavy modules, and module_level_imports(script) then finds the script.
    plain = [s for s in SCRIPTS if s.name not in PLOTTING_SCRIPTS]
    for script in SCRIPTS:
        assert "from ccfv" in module_level_imports(script), f"{script.name}: expected its entry point from ccfv"
    loaded = loaded_after("\n".join(module_level_imports(s) for s in plain))
    assert loaded == set(), f"the scripts of {[s.name for s in plain]} import {sorted(loaded)} before their job"
    plotting = [s for s in SCRIPTS if s.name in PLOTTING_SCRIPTS]
    assert len(plotting) == len(PLOTTING_SCRIPTS)
    assert loaded_after("\n".join(module_level_imports(s) for s in plotting)) <= {"matplotlib"}


LIBRARY_MODULES = ["ccfv", "ccfv.cli", "ccfv.io", "ccfv.workflow", "ccfv.data", "ccfv.data.synthetic",
                   "ccfv.data.validate", "ccfv.data.msd", "ccfv.data.checksums", "ccfv.preprocess.paths",
                   "ccfv.preprocess.nnunet", "ccfv.preprocess.plans", "ccfv.preprocess.splits", "ccfv.bank.networks",
                   "ccfv.bank.model_card", "ccfv.bank.model_ids", "ccfv.bank.checkpoints", "ccfv.bank.trainer",
                   "ccfv.bank.training", "ccfv.finetune.nnunet", "ccfv.finetune.evaluation", "ccfv.features.target",
                   "ccfv.scores.scoring", "ccfv.scores.views", "ccfv.scores.metrics", "ccfv.models", "ccfv.models.bank",
                   "ccfv.rank"]


def test_library_modules_import_no_heavy_package():
    assert loaded_after("\n".join(f"import {m}" for m in LIBRARY_MODULES)) == set()


def test_unet_jobs_never_import_monai_nor_the_trainer_module(tiny_dataset, tmp_path):
    """random_init, sample_features and score for a U-Net bank member, through the functions their
    scripts call: no MONAI (only UNETR needs it), no nnU-Net trainer module (only training needs it), no
    plotting stack, no torch._dynamo; scoring needs no torch at all."""
    from ccfv.preprocess.nnunet import case_identifiers
    from ccfv.preprocess.splits import make_split, write_split

    split = tmp_path / "split.json"
    write_split(make_split(case_identifiers(tiny_dataset.preprocessed), 0.2, seed=0), split)
    model, features, scores = tmp_path / "bank" / "unet-random", tmp_path / "f.h5", tmp_path / "s.json"
    sampling = {"total": 60, "minimum": 5, "n_global": 20, "n_background": 20, "step_size": 0.5,
                "batch_size": 2, "seed": 0, "layer_ratios": {"unet": [0.5, 1.0], "unetr": [0.25, 0.5, 0.75, 1.0]}}

    random_init = f"""
from ccfv.bank.training import random_model
random_model({str(tiny_dataset.preprocessed)!r}, "unet-random", {str(model)!r}, seed=0)
"""
    sample = f"""
from ccfv.features.target import sample_target
sample_target({str(model)!r}, {str(tiny_dataset.preprocessed)!r}, {str(split)!r}, {str(features)!r},
              target="Task94_SynthSpleen", sampling={sampling!r}, device="cpu")
"""
    score = f"""
from ccfv.scores.scoring import score_pair
score_pair({str(features)!r}, {{"ccfv": {{"method": "ccfv"}}, "logme": {{"method": "logme"}},
           "gbc": {{"method": "gbc", "gaussian": "diagonal"}}, "transrate": {{"method": "transrate"}}}},
           {str(scores)!r})
"""
    not_needed = {"monai", "torchvision", "torch._dynamo", "seaborn", "matplotlib", "sklearn", "pandas",
                  "nnunetv2.training.nnUNetTrainer.nnUNetTrainer"}
    # torch is imported inside the functions only (see the test above): seeing it shows the probe sees
    # lazy imports, so the empty intersections are worth something.
    loaded = loaded_after(random_init)
    assert "torch" in loaded and loaded & not_needed == set(), loaded
    assert model.is_dir()
    loaded = loaded_after(sample)
    assert "torch" in loaded and loaded & not_needed == set(), loaded
    assert features.is_file()
    assert loaded_after(score) == set()
    assert set(json.loads(scores.read_text())["scores"]) == {"ccfv", "logme", "gbc", "transrate"}
