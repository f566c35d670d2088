# Config validation, wildcard constraints, paths and input functions shared by every stage.
from pathlib import Path

from snakemake.utils import validate


validate(config, schema="../config/schemas/config.schema.yaml")

R = config["results"]
TASKS = list(config["tasks"])
ARCH = "unet"
RANDOM_MODEL = f"{ARCH}-random"
CONTAINER = "containers/ccfv.sif"
CONDA_ENV = "../envs/ccfv.yaml"
FT_SEEDS = list(config["finetune"]["seeds"])

n_decoder_stages = len(config["network"]["features_per_stage"]) - 1
if len(config["sampling"]["layer_ratios"]) != n_decoder_stages:
    raise ValueError(
        f"config: sampling.layer_ratios has {len(config['sampling']['layer_ratios'])} entries but the "
        f"network has {n_decoder_stages} decoder stages (features_per_stage minus one); give one ratio per stage"
    )


wildcard_constraints:
    task="Task[0-9]+_[A-Za-z0-9]+",
    target="Task[0-9]+_[A-Za-z0-9]+",
    model=f"{ARCH}-(random|Task[0-9]+_[A-Za-z0-9]+)",
    seed="[0-9]+",


def pretrained_model(task):
    return f"{ARCH}-{task}"


def bank(target):
    """The target's model bank: a model pretrained on every other task, plus a random one."""
    return [pretrained_model(t) for t in TASKS if t != target] + [RANDOM_MODEL]


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


def resources_for(kind):
    return config["resources"][kind]


def final_outputs():
    return [f"{R}/tables/table1.csv", f"{R}/tables/table1.md"]
