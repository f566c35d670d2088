"""Glue for the Snakefile and its scripts: logs that catch everything a job prints, including its
subprocesses; config errors that name the file holding the bad value; and the config checks a JSON Schema
cannot express (rules/common.smk runs them before any job)."""
from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import yaml


@contextmanager
def log_to(path: str | os.PathLike):
    """Send file descriptors 1 and 2 (so also nnU-Net's worker processes) to ``path`` for the block.

    An exception is written to the log with its traceback and re-raised, so the job fails and the log
    says why.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a", buffering=1) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        except BaseException:
            traceback.print_exc(file=sys.stderr)
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def config_layers(configfiles: Sequence[str | os.PathLike], cli_configfiles: Sequence[str | os.PathLike] = (),
                  cli_config: Mapping | None = None) -> list[tuple[str, Mapping]]:
    """The sources of a Snakemake config, lowest precedence first: the Snakefile's ``configfile:`` files,
    then the ``--configfile`` files in the order given, then ``--config`` (named "--config").

    ``configfiles`` may hold the ``--configfile`` files as well (Snakemake's ``workflow.configfiles`` does):
    they are placed by ``cli_configfiles``. A file that does not exist is left out (Snakemake skips a
    Snakefile's ``configfile:`` that is missing when ``--configfile`` is given); one that is not a YAML
    mapping counts as empty, since Snakemake has reported it already.
    """
    cli = [str(f) for f in cli_configfiles]
    resolved = {str(Path(f).resolve()) for f in cli}
    layers = []
    for name in [str(f) for f in configfiles if str(Path(f).resolve()) not in resolved] + cli:
        try:
            loaded = yaml.safe_load(Path(name).read_text())
        except OSError:
            continue
        except yaml.YAMLError:
            loaded = None
        layers.append((name, loaded if isinstance(loaded, Mapping) else {}))
    if cli_config:
        layers.append(("--config", dict(cli_config)))
    return layers


def config_origin(key: Sequence[str | int], layers: Sequence[tuple[str, Mapping]]) -> str:
    """Which source gives the config value at ``key`` (a path of keys, e.g. ``["finetune", "batch_size"]``):
    the last layer of :func:`config_layers` that sets it, since it overrides the ones before. When no
    layer sets it (a required key missing, or a default), every layer's name, joined by " + "."""
    for name, mapping in reversed(layers):
        node = mapping
        for part in key:
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and isinstance(part, int) and -len(node) <= part < len(node):
                node = node[part]
            else:
                break
        else:
            return name
    return " + ".join(name for name, _ in layers) or "config"


def config_error_message(error, layers: Sequence[tuple[str, Mapping]]) -> str:
    """One line for a failed schema validation (a ``jsonschema.ValidationError``): the file that sets the
    offending value, the dotted key and what is wrong, e.g. ``config (/tmp/mine.yaml): finetune.batch_size:
    -3 is less than the minimum of 1``.

    A key the schema does not know is reported at the unknown key itself, so that the file named is the
    one that misspells it rather than every file that sets the section around it; a required key that is
    missing is reported at that key, which no file sets, so every file is named.
    """
    key = list(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, Mapping):
        missing = [k for k in error.validator_value if k not in error.instance]
        if missing:
            key = [*key, missing[0]]
    elif error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        allowed = set(error.schema.get("properties", {}))
        patterns = list(error.schema.get("patternProperties", {}))
        unknown = [k for k in error.instance if k not in allowed and not any(re.search(p, str(k)) for p in patterns)]
        if unknown:
            key = [*key, unknown[0]]
    where = ".".join(str(part) for part in key) or "(top level)"
    return f"config ({config_origin(key, layers)}): {where}: {error.message}"


#: Where a config error is: ``source(*key)`` names the file (or ``--config``) that sets the value at ``key``.
ConfigSource = Callable[..., str]


def _where(source: ConfigSource | None, *key) -> str:
    return source(*key) if source is not None else "config"


def check_config_before_schema(config: Mapping, source: ConfigSource | None = None) -> None:
    """What the JSON Schema refuses too but cannot explain: ``head_init`` in ``pretrain`` (or one of its
    ``per_task`` entries), where its message (``should not be valid under {'required': ['head_init']}``)
    does not say why. Raises ValueError naming the file, the key and the reason."""
    pretrain = config.get("pretrain") or {}
    sections = {("pretrain",): pretrain,
                **{("pretrain", "per_task", t): e for t, e in (pretrain.get("per_task") or {}).items()}}
    for where, section in sections.items():
        if isinstance(section, Mapping) and "head_init" in section:
            raise ValueError(
                f"config ({_where(source, *where, 'head_init')}): {'.'.join(where)}.head_init: "
                "head_init is for fine-tuning only (finetune.head_init: how the target's fresh segmentation heads "
                "start); a pretraining starts from nnU-Net's initialisation"
            )


#: The rules of the data path (rules/data.smk, rules/preprocess.smk): a run that stops there needs no bank.
DATA_PATH_RULES = frozenset({"synthesize_task", "fetch_msd_task", "validate_task", "convert_to_nnunet",
                             "plan_and_preprocess", "make_split"})
#: The folders of the results that the data path writes (``<results>/<folder>/...``).
DATA_PATH_FOLDERS = ("data", "checksums", "nnunet", "splits")


def data_path_only(until: Sequence[str], targets: Sequence[str], results: str, target_jobs: Sequence = ()) -> bool:
    """Whether a Snakemake run stops at the data path (validation, nnU-Net conversion and preprocessing, the
    split): every ``--until`` entry is one of :data:`DATA_PATH_RULES`, or every target is such a rule or a file
    under ``<results>/{data,checksums,nnunet,splits}/``, or (a cluster job's own Snakemake) every
    ``--target-jobs`` entry (``rule:wildcards`` or Snakemake's parsed ``TargetSpec``) is such a rule. Such a run
    builds no bank, so the bank's size is not checked (:func:`check_bank_size`; rules/common.smk checks it when
    the DAG is built, where Snakemake's ``--until`` and targets are known, which they are not while the
    Snakefile is read)."""
    if target_jobs:
        names = {getattr(t, "rulename", None) or str(t).split(":", 1)[0] for t in target_jobs}
        return names <= DATA_PATH_RULES
    if until:
        return set(until) <= DATA_PATH_RULES
    prefixes = tuple(os.path.normpath(os.path.join(results, folder)) + os.sep for folder in DATA_PATH_FOLDERS)
    return bool(targets) and all(t in DATA_PATH_RULES or os.path.normpath(t).startswith(prefixes) for t in targets)


def targets_of(config: Mapping) -> list[str]:
    """The tasks whose banks are scored and fine-tuned: ``targets``, default every task of ``tasks``."""
    return list(config.get("targets") or config["tasks"])


def task_source(config: Mapping, task: str) -> str:
    """Where ``task``'s data comes from: ``synthetic`` or ``msd`` (``data.sources``, default ``data.source``)."""
    data = config["data"]
    return (data.get("sources") or {}).get(task, data["source"])


def external_members(config: Mapping) -> dict[str, Mapping]:
    """``bank.external``: {name: entry} of the released models added to every target's bank."""
    return dict((config.get("bank") or {}).get("external") or {})


def check_bank_size(config: Mapping, source: ConfigSource | None = None) -> None:
    """Each target's bank must hold at least 3 models (a rank correlation over fewer says nothing): per
    architecture, the other tasks (each with its pretraining snapshots) and a random member, plus the external
    members (``bank.external``, each with its random copy). Raises ValueError naming the file that sets
    ``tasks``, and how to run the data path alone."""
    from .models.members import member_names

    tasks, architectures = list(config["tasks"]), list(config["architectures"])
    snapshots = config["pretrain"].get("snapshots", [])
    external = len(member_names(external_members(config)))
    bank_size = len(architectures) * ((len(tasks) - 1) * (1 + len(snapshots)) + 1) + external
    if bank_size < 3:
        raise ValueError(
            f"config ({_where(source, 'tasks')}): each target's bank would hold {bank_size} models "
            f"({len(tasks) - 1} other task(s) + a random member, for each of {architectures}; {external} external); "
            f"correlations need at least 3: add a task, an architecture or an external member (to run only the "
            f"data path, i.e. validation, nnU-Net preprocessing and the split, add --until make_split)"
        )


def check_study_config(config: Mapping, source: ConfigSource | None = None) -> None:
    """What the JSON Schema cannot check of ``targets``, ``data.sources``, ``bank.external`` and
    ``finetune.method``, before any job: targets and per-task sources name tasks of ``tasks`` whose source
    section is given; every external member's path exists (relative paths: from the working directory) and
    is a model of a known format (the declared ``format`` if given), with a random copy and a patch size only
    where its format has them, named unlike the bank's architectures; ``sampling.layer_ratios`` names only
    architectures and external members; external members are fine-tuned by ``finetune.method: protocol``
    only (nnU-Net's trainer fits networks built from nnU-Net plans). Raises ValueError:
    ``config (<file>): <dotted key>: <problem>``."""
    from .models.members import RANDOM_COPY_FORMATS, detect_format

    tasks = list(config["tasks"])
    for i, target in enumerate(config.get("targets") or []):
        if target not in tasks:
            raise ValueError(f"config ({_where(source, 'targets', i)}): targets: {target} is not one of tasks "
                             f"{tasks}; a target must also be a task (its data is validated, preprocessed and split)")
    data = config["data"]
    for task, kind in (data.get("sources") or {}).items():
        if task not in tasks:
            raise ValueError(f"config ({_where(source, 'data', 'sources', task)}): data.sources.{task}: not one of "
                             f"tasks {tasks}")
    for task in tasks:
        kind = task_source(config, task)
        if not data.get(kind):
            where = ("data", "sources", task) if task in (data.get("sources") or {}) else ("data", "source")
            raise ValueError(f"config ({_where(source, *where)}): {'.'.join(where)}: {task}'s data is {kind}, but "
                             f"the config has no data.{kind} section")
    architectures = list(config["architectures"])
    external = external_members(config)
    for name, entry in external.items():
        key = ("bank", "external", name)
        dotted = ".".join(key)
        if name in architectures:
            raise ValueError(f"config ({_where(source, *key)}): {dotted}: the name {name!r} is one of the bank's "
                             f"architectures {architectures}; give the external member another name")
        path = Path(entry["path"])
        if not path.exists():
            raise ValueError(f"config ({_where(source, *key, 'path')}): {dotted}.path: {entry['path']!r} does not "
                             f"exist ({path.resolve()}; a relative path is taken from the working directory)")
        fmt = detect_format(path)
        if fmt is None:
            raise ValueError(f"config ({_where(source, *key, 'path')}): {dotted}.path: {entry['path']!r} is not a "
                             "model of a known format (a brainchop MeshNet folder, hippodeep's .pt, a ccfv bank "
                             "model, a MONAI bundle or an nnU-Net model folder)")
        if entry.get("format") not in (None, fmt):
            raise ValueError(f"config ({_where(source, *key, 'format')}): {dotted}.format: {entry['format']!r}, but "
                             f"{entry['path']!r} is a {fmt!r} model")
        for option, given in (("random_copy", entry.get("random_copy", True)), ("patch_size", entry.get("patch_size"))):
            if given and fmt not in RANDOM_COPY_FORMATS:
                raise ValueError(f"config ({_where(source, *key, option)}): {dotted}.{option}: a {fmt!r} model has "
                                 f"none here (only {list(RANDOM_COPY_FORMATS)}); set random_copy: false and leave "
                                 "patch_size out")
        patch = entry.get("patch_size")
        if patch and fmt == "hippodeep" and any(p % 4 for p in patch):
            raise ValueError(f"config ({_where(source, *key, 'patch_size')}): {dotted}.patch_size: {patch}: "
                             "hippodeep's patch sides must be multiples of 4")
    ratios = config["sampling"]["layer_ratios"]
    if isinstance(ratios, Mapping):
        from .bank.networks import UNET, UNETR

        unknown = [k for k in ratios if k not in (UNET, UNETR) and k not in external]
        if unknown:
            raise ValueError(f"config ({_where(source, 'sampling', 'layer_ratios', unknown[0])}): "
                             f"sampling.layer_ratios.{unknown[0]}: neither an architecture {[UNET, UNETR]} nor an "
                             f"external member {sorted(external)}")
    method = config["finetune"].get("method", "nnunet")
    if external and method != "protocol":
        raise ValueError(f"config ({_where(source, 'finetune', 'method')}): finetune.method: {method!r} cannot "
                         f"fine-tune the external members {sorted(external)} (nnU-Net's trainer fits networks built "
                         "from nnU-Net plans only); set finetune.method: protocol (docs/finetune.md)")


def check_config(config: Mapping, source: ConfigSource | None = None, bank: bool = True) -> None:
    """The workflow's checks that a JSON Schema cannot express, run on a schema-valid config before any job:
    snapshots inside every task's pretraining, a bank of at least 3 models per target (:func:`check_bank_size`;
    not with ``bank=False``: rules/common.smk checks it when the DAG is built), one layer ratio per hooked
    decoder stage, UNETR's patch size, tables that name defined metrics, every metric's method and options, and,
    for MSD data, that
    ``data.msd.root`` (where tasks are fetched) does not lie inside ``data.msd.local`` (shared storage, which
    the workflow only reads; relative paths are taken from the working directory). Raises ValueError:
    ``config (<file>): <dotted key>: <problem>`` (``source``: see :data:`ConfigSource`; without it the file is
    named "config")."""
    from .bank.networks import UNETR, UNETR_STAGES, VIT_PATCH
    from .scores.scoring import check_metric

    msd = config.get("data", {}).get("msd") or {}
    if any(task_source(config, t) == "msd" for t in config["tasks"]) and msd.get("local"):
        local, root = Path(msd["local"]).resolve(), Path(msd["root"]).resolve()
        if root == local or local in root.parents:
            raise ValueError(
                f"config ({_where(source, 'data', 'msd', 'root')}): data.msd.root {msd['root']!r} lies inside "
                f"data.msd.local {msd['local']!r} ({local}): fetched tasks would be written into the shared "
                "storage, which the workflow only reads; put data.msd.root elsewhere (e.g. under the results)"
            )
    tasks, architectures = list(config["tasks"]), list(config["architectures"])
    pretrain = config["pretrain"]
    snapshots = sorted(pretrain.get("snapshots", []))
    for task in tasks:
        iterations = pretrain.get("per_task", {}).get(task, {}).get("iterations", pretrain["iterations"])
        late = [i for i in snapshots if i >= iterations]
        if late:
            raise ValueError(
                f"config ({_where(source, 'pretrain', 'snapshots')}): pretrain.snapshots {late} are not before the "
                f"end of {task}'s pretraining ({iterations} iterations); a snapshot must be taken at an iteration "
                f"between 1 and {iterations - 1}"
            )
    check_study_config(config, source)
    if bank:
        check_bank_size(config, source)
    # Hooked decoder stages per architecture: the U-Net's (features_per_stage minus one) and UNETR's four.
    decoder_stages = {"unet": len(config["network"]["features_per_stage"]) - 1, UNETR: len(UNETR_STAGES)}
    ratios = config["sampling"]["layer_ratios"]
    for arch in architectures:
        given = ratios.get(arch) if isinstance(ratios, Mapping) else ratios
        if given is None or len(given) != decoder_stages[arch]:
            raise ValueError(
                f"config ({_where(source, 'sampling', 'layer_ratios')}): sampling.layer_ratios gives "
                f"{'no' if given is None else len(given)} entries for {arch}, whose network has "
                f"{decoder_stages[arch]} hooked decoder stages (U-Net: features_per_stage minus one; UNETR: 4); "
                f"give one ratio per stage, as a mapping architecture -> list (docs/models.md)"
            )
    if UNETR in architectures:
        bad = [p for p in config["network"]["patch_size"] if p % VIT_PATCH]
        if bad:
            raise ValueError(
                f"config ({_where(source, 'network', 'patch_size')}): network.patch_size "
                f"{config['network']['patch_size']} is UNETR's img_size and must be a multiple of {VIT_PATCH} (its "
                f"ViT patch) on every axis; {bad} is not. Change the patch size or drop unetr from architectures"
            )
    metrics = config["scoring"]["metrics"]
    for table, names in config["scoring"]["tables"].items():
        unknown = [m for m in names if m not in metrics]
        if unknown:
            raise ValueError(f"config ({_where(source, 'scoring', 'tables', table)}): scoring.tables.{table} names "
                             f"{unknown}, which scoring.metrics does not define")
    # A misspelt metric option must fail now, not after hours of pretraining (jobs check again in any case).
    for name, definition in metrics.items():
        try:
            check_metric(name, definition)
        except ValueError as err:
            raise ValueError(f"config ({_where(source, 'scoring', 'metrics', name)}): scoring.metrics: {err}") \
                from None


def start_job(job) -> None:
    """What every Snakemake job's script does first, before anything imports numpy or torch: pin the CPU
    numerics (:func:`ccfv.reproducibility.pin_cpu_numerics`) at the job's thread count, so that the same
    commit, config and seed give the same numbers, bit for bit, on any x86-64 machine of the pinned level
    (docs/reproducibility.md). ``job`` is the script's ``snakemake`` object (its ``threads``: the rule's
    threads, which Snakemake lowers to ``--cores``; results are reproduced with the same thread count).

    A CPU below the level (or not x86-64) runs the job unpinned with a warning in its log, and
    ``provenance.json`` records it.
    """
    from .reproducibility import pin_or_warn

    pin_or_warn(threads=int(job.threads))
