# Config validation, wildcard constraints, paths and input functions shared by every stage.
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

try:
    # Errors that name the config file holding the bad value need the ccfv package in the Python that runs
    # Snakemake (true for make demo); without it they name the key only.
    from ccfv.workflow import config_error_message, config_layers, config_origin
except ImportError:
    config_layers = None

# Where each config value came from, lowest precedence first (config/config.yaml, --configfile, --config).
CONFIG_LAYERS = (config_layers(workflow.configfiles, workflow.config_settings.configfiles,
                               workflow.config_settings.config) if config_layers else [])


def config_source(*key):
    """The file (or "--config") that sets the config value at ``key``, for error messages."""
    return config_origin(key, CONFIG_LAYERS) if config_layers else "config"


# The schema refuses these too, but its message ("should not be valid under {'required': ['head_init']}")
# does not say why.
_pretrain = config.get("pretrain") or {}
_sections = {("pretrain",): _pretrain,
             **{("pretrain", "per_task", t): e for t, e in (_pretrain.get("per_task") or {}).items()}}
for _where, _section in _sections.items():
    if isinstance(_section, dict) and "head_init" in _section:
        raise ValueError(
            f"config ({config_source(*_where, 'head_init')}): {'.'.join(_where)}.head_init: "
            "head_init is for fine-tuning only (finetune.head_init: how the target's fresh segmentation heads "
            "start); a pretraining starts from nnU-Net's initialisation"
        )
try:
    validate(config, schema="../config/schemas/config.schema.yaml")
except WorkflowError as err:
    # Snakemake raises it while handling jsonschema's ValidationError, which holds the key path.
    _invalid = err.__context__
    if not hasattr(_invalid, "absolute_path") or not config_layers:
        raise
    raise ValueError(config_error_message(_invalid, CONFIG_LAYERS)) from None

R = config["results"]
TASKS = list(config["tasks"])
# The bank's architectures (docs/models.md); a bank model is named <architecture>-<source task> or
# <architecture>-random.
ARCHITECTURES = list(config["architectures"])
UNETR = config.get("unetr", {})
CONTAINER = "containers/ccfv.sif"
# One pinned conda env per family of rules (envs/*.yaml, pins checked against requirements.lock).
DATA_ENV = "../envs/data.yaml"
NNUNET_ENV = "../envs/nnunet.yaml"
SCORES_ENV = "../envs/scores.yaml"
FT_SEEDS = list(config["finetune"]["seeds"])
# Pretraining iterations after which each pretrained network is also kept as a bank member
# (<architecture>-<source task>@<iteration>; docs/models.md). Sorted: the order of the pretrain rule's outputs.
SNAPSHOTS = sorted(config["pretrain"].get("snapshots", []))
for _task in TASKS:
    _iterations = config["pretrain"].get("per_task", {}).get(_task, {}).get("iterations", config["pretrain"]["iterations"])
    _late = [i for i in SNAPSHOTS if i >= _iterations]
    if _late:
        raise ValueError(
            f"config ({config_source('pretrain', 'snapshots')}): pretrain.snapshots {_late} are not before the end "
            f"of {_task}'s pretraining ({_iterations} iterations); a snapshot must be taken at an iteration "
            f"between 1 and {_iterations - 1}"
        )
# A rank correlation over fewer than three models says nothing.
# Per architecture: the other tasks (each with its snapshots) and a random member.
_bank_size = len(ARCHITECTURES) * ((len(TASKS) - 1) * (1 + len(SNAPSHOTS)) + 1)
if _bank_size < 3:
    raise ValueError(
        f"config ({config_source('tasks')}): each target's bank would hold {_bank_size} models "
        f"({len(TASKS) - 1} other task(s) + a random member, for each of {ARCHITECTURES}); correlations need "
        f"at least 3: add a task or an architecture"
    )

# Hooked decoder stages per architecture: the U-Net's (features_per_stage minus one) and UNETR's four.
DECODER_STAGES = {"unet": len(config["network"]["features_per_stage"]) - 1, "unetr": 4}
_ratios = config["sampling"]["layer_ratios"]
for _arch in ARCHITECTURES:
    _given = _ratios.get(_arch) if isinstance(_ratios, dict) else _ratios
    if _given is None or len(_given) != DECODER_STAGES[_arch]:
        raise ValueError(
            f"config ({config_source('sampling', 'layer_ratios')}): sampling.layer_ratios gives "
            f"{'no' if _given is None else len(_given)} entries for {_arch}, whose network has "
            f"{DECODER_STAGES[_arch]} hooked decoder stages (U-Net: features_per_stage minus one; UNETR: 4); "
            f"give one ratio per stage, as a mapping architecture -> list (docs/models.md)"
        )
if "unetr" in ARCHITECTURES:
    _bad = [p for p in config["network"]["patch_size"] if p % 16]
    if _bad:
        raise ValueError(
            f"config ({config_source('network', 'patch_size')}): network.patch_size "
            f"{config['network']['patch_size']} is UNETR's img_size and must be a multiple of 16 (its ViT patch) "
            f"on every axis; {_bad} is not. Change the patch size or drop unetr from architectures"
        )

METRICS = config["scoring"]["metrics"]
for table, names in config["scoring"]["tables"].items():
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(f"config ({config_source('scoring', 'tables', table)}): scoring.tables.{table} names "
                         f"{unknown}, which scoring.metrics does not define")
try:
    # A misspelt metric option must fail now, not after hours of pretraining. The check needs the ccfv
    # package in the Python that runs Snakemake (true for make demo); jobs check again in any case.
    from ccfv.scoring import check_metric
except ImportError:
    check_metric = None
if check_metric is not None:
    for name, definition in METRICS.items():
        try:
            check_metric(name, definition)
        except ValueError as err:
            raise ValueError(f"config ({config_source('scoring', 'metrics', name)}): scoring.metrics: {err}") \
                from None


def metric_definitions():
    """Every metric's method and options, without the table labels (a new label must not rerun scoring)."""
    return canonical({name: {k: v for k, v in d.items() if k != "label"} for name, d in METRICS.items()})


def metric_labels():
    return {name: d["label"] for name, d in METRICS.items() if "label" in d}


wildcard_constraints:
    task="Task[0-9]+_[A-Za-z0-9]+",
    target="Task[0-9]+_[A-Za-z0-9]+",
    model=f"({'|'.join(ARCHITECTURES)})-(random|Task[0-9]+_[A-Za-z0-9]+(@[0-9]+)?)",
    arch="|".join(ARCHITECTURES),
    seed="[0-9]+",


def pretrained_model(arch, task):
    return f"{arch}-{task}"


def snapshot_model(arch, task, iteration):
    return f"{pretrained_model(arch, task)}@{iteration}"


def random_model(arch):
    return f"{arch}-random"


def bank(target):
    """The target's model bank: for every architecture, a model pretrained on every other task, its training
    snapshots (pretrain.snapshots), plus a random one."""
    return [
        m
        for a in ARCHITECTURES
        for t in TASKS
        if t != target
        for m in [pretrained_model(a, t), *(snapshot_model(a, t, i) for i in SNAPSHOTS)]
    ] + [random_model(a) for a in ARCHITECTURES]


def sampling_for(model):
    """The sampling settings of one bank model, with layer_ratios resolved for its architecture (so that
    the ratios of one architecture never rerun the other's sampling)."""
    arch = model.split("-", 1)[0]
    ratios = config["sampling"]["layer_ratios"]
    return canonical({**config["sampling"], "layer_ratios": ratios[arch] if isinstance(ratios, dict) else ratios})


def network_params(arch):
    """What pretraining and the random member need to build the network: its name and options (UNETR's
    section; the U-Net is entirely described by the shared plans)."""
    return {"name": arch, "options": canonical(UNETR) if arch == "unetr" else {}}


def task_folder(task):
    """The MSD-layout folder of a task: generated for the demo; for MSD an extracted copy in
    data.msd.local when there is one (read in place, never copied), else fetched into data.msd.root."""
    if config["data"]["source"] == "synthetic":
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
    budget = {k: v for k, v in section.items() if k not in ("per_task", "seeds") and not (k == "snapshots" and not v)}
    budget.update(section.get("per_task", {}).get(task, {}))
    return canonical(budget)


def resources_for(kind):
    return config["resources"][kind]


TABLES = list(config["scoring"]["tables"])


def final_outputs():
    """Every table and figure of rules/results.smk, then the provenance record (which needs all of them)."""
    tables = [*TABLES, "paper_comparison", "statistics", "selection", "stability", "regret", "noise_ceiling",
              "costs_per_stage", "costs_per_pair"]
    return [
        *(f"{R}/tables/{name}.{ext}" for name in tables for ext in ("csv", "md")),
        *(f"{R}/tables/{name}.tex" for name in TABLES),
        f"{R}/tables/scores_and_dice.csv",
        f"{R}/tables/records.json",
        *(f"{R}/figures/{name}.{ext}" for name in ("scores_vs_dice", "dice_heatmap", "feature_tsne") for ext in ("png", "svg")),
        f"{R}/provenance.json",
    ]
