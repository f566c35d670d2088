"""Probe the fine-tuning protocol on one bank member of a finished (or partly finished) workflow run: does
the member learn the target within the budget, and under which settings? (docs/real-study.md, "The first
ground truth cannot rank").

    python analysis/protocol_probe.py /work/wt/real/results-realstudy Task04_Hippocampus \\
        ../shared/models/hippodeep/hippodeep.pt --patch 32 48 32 --set iterations=75 --set learning_rate=1e-5 \\
        --out /tmp/probe

Fine-tunes the model (a bank model folder, or any external model ``ccfv rank`` reads) on the run's recorded
split of ``target`` (``splits/<target>.json``, the converted raw data ``nnunet/<target>/raw/``) by
``ccfv.finetune.run.finetune_member``, the workflow's ``finetune_protocol`` job, with the protocol's defaults
(:class:`ccfv.finetune.settings.FinetuneProtocol`) changed by ``--set key=value``, and prints one line: the
held-out Dice and every 10th training loss. ``--patch`` sets the sliding window and fine-tuning patch (the
workflow's ``bank.external.<name>.patch_size``), which ``ccfv finetune`` does not expose. Pins the CPU
numerics first, as a workflow job does, so the same arguments give the same numbers.
"""
from __future__ import annotations

import sys

if __name__ == "__main__":
    from ccfv.reproducibility import pin_or_warn

    pin_or_warn(threads=1)

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402


def parse_settings(pairs: list[str]) -> dict:
    """``["iterations=75", "head_init=random"]`` -> protocol settings with their types (the dataclass's)."""
    from dataclasses import fields

    from ccfv.finetune.settings import FinetuneProtocol

    types = {f.name: type(getattr(FinetuneProtocol(), f.name)) for f in fields(FinetuneProtocol)}
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in types:
            raise SystemExit(f"protocol_probe: --set {pair!r}: expected key=value with key one of {sorted(types)}")
        # a list setting (learning_rate_grid) is given comma-separated: learning_rate_grid=3e-3,1e-3,1e-4
        out[key] = tuple(float(v) for v in value.split(",")) if types[key] is tuple else types[key](value)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="the run's results folder (splits/, nnunet/<target>/raw/)")
    parser.add_argument("target")
    parser.add_argument("model", type=Path, help="a bank model folder or an external model")
    parser.add_argument("--name", default=None, help="the model id in the outputs (default: the path's name)")
    parser.add_argument("--patch", type=int, nargs=3, default=None, help="patch size (default: the model's own)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a protocol setting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    from ccfv.finetune.run import finetune_member
    from ccfv.preprocess.paths import dataset_folder

    protocol = parse_settings(args.set)
    name = args.name or args.model.stem
    member = {"name": name, "path": str(args.model), "random_seed": None, "patch_size": args.patch}
    try:
        row = finetune_member(dataset_folder(args.results / "nnunet" / args.target / "raw", args.target), member,
                              args.results / "splits" / f"{args.target}.json", args.out, args.out / "dice.json",
                              seed=args.seed, protocol=protocol, threads=1, device="cpu")
    except (OSError, ValueError, RuntimeError) as err:
        print(f"protocol_probe: {err}", file=sys.stderr)
        return 2
    print(f"{name} patch={args.patch} protocol={protocol} seed={args.seed} dice={row['mean_dice']:.4f} "
          f"losses={[round(x, 3) for x in row['losses'][::10]]}"
          + (f" rate={row['learning_rate']:g} of mean pilot losses {row['learning_rate_selection']['mean_loss']}"
             if row.get("learning_rate_selection") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
