# Config validation, wildcard constraints, paths and input functions shared by every stage.
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# The config checks and the model-id format live in the ccfv package (tests reach them there), which the
# Python running Snakemake must import (true for make demo, the cluster's .venv and the container).
from ccfv.bank.model_ids import (TASK_PATTERN, external_model_id_pattern, model_architecture, model_id_pattern,
                                 pretrained_model_id, random_model_id, snapshot_model_id)
from ccfv.data.checksums import tree_digest
from ccfv.features.settings import model_sampling
from ccfv.models.members import external_member, member_names
from ccfv.workflow import (check_bank_size, check_config, check_config_before_schema, config_error_message, config_layers,
                           config_origin, data_path_only, external_members, targets_of, task_source)

# Where each config value came from, lowest precedence first (config/config.yaml, --configfile, --config).
CONFIG_LAYERS = config_layers(workflow.configfiles, workflow.config_settings.configfiles,
                              workflow.config_settings.config)


def config_source(*key):
    """The file (or "--config") that sets the config value at ``key``, for error messages."""
    return config_origin(key, CONFIG_LAYERS)


check_config_before_schema(config, config_source)
try:
    validate(config, schema="../config/schemas/config.schema.yaml")
except WorkflowError as err:
    # Snakemake raises it while handling jsonschema's ValidationError, which holds the key path.
    _invalid = err.__context__
    if not hasattr(_invalid, "absolute_path"):
        raise
    raise ValueError(config_error_message(_invalid, CONFIG_LAYERS)) from None
# The bank's size is checked by finetune_results, when the DAG is built: a run that stops at the data path
# (--until make_split) needs no bank, and Snakemake's --until is not known while the Snakefile is read.
check_config(config, config_source, bank=False)

R = config["results"]
TASKS = list(config["tasks"])
# The tasks whose banks are scored and fine-tuned (config key targets, default every task); the others are sources only.
TARGETS = targets_of(config)
# The bank's architectures (docs/models.md); a bank model is named <architecture>-<source task> or
# <architecture>-random (ccfv.bank.model_ids).
ARCHITECTURES = list(config["architectures"])
UNETR = config.get("unetr", {})
CONTAINER = "containers/ccfv.sif"
# One pinned conda env per family of rules (envs/*.yaml, pins checked against requirements.lock).
DATA_ENV = "../envs/data.yaml"
NNUNET_ENV = "../envs/nnunet.yaml"
SCORES_ENV = "../envs/scores.yaml"
FT_SEEDS = list(config["finetune"]["seeds"])
# nnunet: nnU-Net's trainer (rules/finetune.smk's finetune); protocol: ccfv.finetune's one recipe for every format.
FT_METHOD = config["finetune"].get("method", "nnunet")
# Released models added to every target's bank (bank.external): <name>-released, <name>-random (ccfv.models.members).
EXTERNAL = external_members(config)
EXTERNAL_MODELS = member_names(EXTERNAL)
# Pretraining iterations after which each pretrained network is also kept as a bank member
# (<architecture>-<source task>@<iteration>; docs/models.md). Sorted: the order of the pretrain rule's outputs.
SNAPSHOTS = sorted(config["pretrain"].get("snapshots", []))
METRICS = config["scoring"]["metrics"]


def metric_definitions():
    """Every metric's method and options, without the table labels (a new label must not rerun scoring)."""
    return canonical({name: {k: v for k, v in d.items() if k != "label"} for name, d in METRICS.items()})


def metric_labels():
    return {name: d["label"] for name, d in METRICS.items() if "label" in d}


wildcard_constraints:
    task=TASK_PATTERN,
    target=TASK_PATTERN,
    model=model_id_pattern(ARCHITECTURES, list(EXTERNAL)),
    arch="|".join(ARCHITECTURES),
    seed="[0-9]+",


def bank(target):
    """The target's model bank: for every architecture, a model pretrained on every other task, its training
    snapshots (pretrain.snapshots), plus a random one; then the external members (bank.external)."""
    return [
        m
        for a in ARCHITECTURES
        for t in TASKS
        if t != target
        for m in [pretrained_model_id(a, t), *(snapshot_model_id(pretrained_model_id(a, t), i) for i in SNAPSHOTS)]
    ] + [random_model_id(a) for a in ARCHITECTURES] + EXTERNAL_MODELS


def is_external(model):
    return model in EXTERNAL_MODELS


def member(model):
    """What a job needs to load one bank member (ccfv.models.members.ExternalMember's mapping): a bank model's
    folder, or an external member's path, random-copy seed and patch."""
    if is_external(model):
        return canonical(external_member(model, EXTERNAL, config["random_init"]["seed"]))
    return {"name": model, "path": bank_dir(model), "patch_size": None, "random_seed": None}


def member_path(model):
    """The file or folder a bank member is read from: its bank folder, or the external model's path."""
    return external_member(model, EXTERNAL, 0)["path"] if is_external(model) else bank_dir(model)


def member_input(model):
    """A rule's input for a bank member. An external model is made by someone else and often re-copied
    (restored, rsynced, re-mounted with new mtimes): its modification time says nothing, so it is ancient() and
    its content digest (member_digest, a param) decides whether the jobs that read it rerun."""
    return ancient(member_path(model)) if is_external(model) else bank_dir(model)


def member_digest(model):
    """SHA-256 of an external member's files (ccfv.data.checksums.tree_digest, cached by size and mtime in
    .snakemake/ccfv/digests.json): new weights rerun its jobs, a copy of the same bytes does not. None for the
    bank's own models, whose folders this workflow writes (their mtimes are its own)."""
    if not is_external(model):
        return None
    try:
        return tree_digest(member_path(model), ".snakemake/ccfv/digests.json")
    except OSError as err:
        raise WorkflowError(f"bank.external: {member_path(model)}: cannot read the model ({err})") from None


def sampling_for(model):
    """The sampling settings of one bank model, with layer_ratios resolved for its architecture (so that
    the ratios of one architecture never rerun the other's sampling). An external member without an entry
    gets null: ccfv.features.settings.default_layer_ratios of its hooked layers. A null window_budget (no
    budget) is left out, so that features sampled before the setting existed keep their params and are not
    rerun."""
    return canonical(model_sampling(config["sampling"], model))


def network_params(arch):
    """What pretraining and the random member need to build the network: its name and options (UNETR's
    section; the U-Net is entirely described by the shared plans)."""
    return {"name": arch, "options": canonical(UNETR) if arch == "unetr" else {}}


def task_folder(task):
    """The MSD-layout folder of a task: generated for the demo (and every task data.sources marks synthetic);
    for MSD an extracted copy in data.msd.local when there is one (read in place, never copied), else fetched
    into data.msd.root."""
    if task_source(config, task) == "synthetic":
        return f"{R}/data/{task}"
    local = config["data"]["msd"].get("local")
    if local and Path(local, task, "dataset.json").is_file():
        return f"{local}/{task}"
    return f"{config['data']['msd']['root']}/{task}"


def bank_dir(model):
    return f"{R}/bank/{model}"


def canonical(value):
    """A config value with every mapping's keys sorted, for use as a rule param.

    Snakemake reruns a job whose params differ from the recorded ones, and it compares them as written:
    the same settings in another key order (a config rewritten by a YAML tool, a --config override)
    would rerun hours of training. Sorting the keys makes params depend on the settings only.
    """
    if isinstance(value, dict):
        return {k: canonical(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


def budget_for(stage, task):
    """The training budget of one job: config[stage] with the task's per_task entry applied, without the
    keys that are not the job's (per_task itself, the list of fine-tuning seeds), so that a change to one
    task's budget or a new seed reruns no other job."""
    section = config[stage]
    # An empty snapshot list is left out: it must not rerun the pretraining of a config that had none.
    budget = {k: v for k, v in section.items()
              if k not in ("per_task", "seeds", "method", "protocol") and not (k == "snapshots" and not v)}
    budget.update(section.get("per_task", {}).get(task, {}))
    return canonical(budget)


def protocol_for(target):
    """finetune.protocol (ccfv.finetune.protocol.FinetuneProtocol's settings) without checkpoint_every, which
    changes no result: a new value must not rerun the fine-tunings. The job passes it on separately."""
    return canonical({k: v for k, v in (config["finetune"].get("protocol") or {}).items() if k != "checkpoint_every"})


def resources_for(kind):
    return config["resources"][kind]


TABLES = list(config["scoring"]["tables"])


def finetune_results(wildcards):
    """The fine-tuning results the ground truth (and every table built on it) reads, once the check that each
    target's bank holds at least 3 models has passed: a correlation over fewer says nothing. Checked here, when the
    DAG is built, since a run that stops at the data path (--until make_split; ccfv.workflow.data_path_only) needs
    no bank, and Snakemake's --until and targets are not known while the Snakefile is read."""
    settings = workflow.dag_settings
    if not data_path_only(settings.until, settings.targets, R, settings.target_jobs):
        check_bank_size(config, config_source)
    return [f"{R}/finetune/{t}/{m}/seed{s}.json" for t in TARGETS for m in bank(t) for s in FT_SEEDS]


def final_outputs():
    """Every table and figure of rules/results.smk, then the provenance record (which needs all of them)."""
    tables = [*TABLES, "paper_comparison", "statistics", "selection", "stability", "regret", "noise_ceiling", "architecture",
              "costs_per_stage", "costs_per_pair"]
    return [
        *(f"{R}/tables/{name}.{ext}" for name in tables for ext in ("csv", "md")),
        *(f"{R}/tables/{name}.tex" for name in TABLES),
        f"{R}/tables/scores_and_dice.csv",
        f"{R}/tables/records.json",
        *(f"{R}/figures/{name}.{ext}" for name in ("scores_vs_dice", "dice_heatmap", "feature_tsne") for ext in ("png", "svg")),
        f"{R}/provenance.json",
    ]
