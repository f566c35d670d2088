"""Glue for the Snakefile and its scripts: logs that catch everything a job prints, including its
subprocesses, and config errors that name the file holding the bad value."""
from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Mapping, Sequence
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
