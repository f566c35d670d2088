"""A user's labelled dataset (``ccfv rank``, ``ccfv finetune``): an MSD task (validated, then converted) or an
nnU-Net raw dataset, its cases and classes."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..io import read_json as _read_json


@dataclass
class Dataset:
    """A labelled dataset in nnU-Net raw form (an MSD task is converted to it first)."""

    name: str
    source: Path                      # what the user gave
    raw: Path                         # the nnU-Net raw folder read
    dataset_json: dict
    cases: dict[str, dict]            # case id -> {"images": [paths], "label": path}
    class_ids: list[int]

    @property
    def num_channels(self) -> int:
        return len(self.dataset_json["channel_names"])

    @property
    def modalities(self) -> list[str]:
        """The channel names in channel order (nnU-Net's ``channel_names``: "CT", "T2", "ADC", ...)."""
        names = self.dataset_json["channel_names"]
        return [str(names[k]) for k in sorted(names, key=lambda k: int(k))]


def _class_ids(labels: dict, where: Path) -> list[int]:
    ids = []
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: label {name!r} is a region ({value}); region-based datasets are not "
                             "supported by ccfv rank")
        try:
            ids.append(int(value))
        except (TypeError, ValueError):
            raise ValueError(f"{where}: label {name!r} has the value {value!r}, not an integer") from None
    foreground = sorted(i for i in ids if i > 0)
    if not foreground:
        raise ValueError(f"{where}: no foreground label (a value > 0) in 'labels'")
    return foreground


def open_dataset(path: Path, work: Path) -> Dataset:
    """The labelled cases of an MSD task folder (validated, then converted with nnU-Net's converter into
    ``work``) or of an nnU-Net raw dataset folder (read in place)."""
    from ..data.validate import nested_dataset_json
    from ..preprocess.paths import parse_task

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such dataset folder")
    if not (path / "dataset.json").exists() and (nested := nested_dataset_json(path)) is not None:
        raise FileNotFoundError(f"{path / 'dataset.json'}: missing; the dataset is one level down: {nested} (the "
                                f"folder holds a nested copy of itself); pass --data {nested.parent}")
    dataset_json = _read_json(path / "dataset.json")
    if "channel_names" in dataset_json or "file_ending" in dataset_json:  # nnU-Net v2 raw
        missing = [k for k in ("channel_names", "labels", "file_ending") if k not in dataset_json]
        if missing:
            raise ValueError(f"{path / 'dataset.json'}: nnU-Net raw dataset without {missing}")
        raw = path
    elif "modality" in dataset_json or "training" in dataset_json:  # MSD
        from ..data.validate import validate_or_raise
        from ..preprocess.nnunet import convert_msd_task

        try:
            parse_task(path.name)
        except ValueError as err:
            raise ValueError(f"{path}: an MSD task folder must be named TaskNN_Name ({err})") from None
        validate_or_raise(path, test_images=False)
        raw = convert_msd_task(path, work / "raw")
        dataset_json = _read_json(raw / "dataset.json")
    else:
        raise ValueError(f"{path / 'dataset.json'}: neither an MSD task ('modality', 'training') nor an nnU-Net "
                         "raw dataset ('channel_names', 'labels', 'file_ending')")
    class_ids = _class_ids(dataset_json["labels"], path / "dataset.json")
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    try:
        cases = get_filenames_of_train_images_and_targets(str(raw), dataset_json)
    except (OSError, KeyError) as err:
        raise ValueError(f"{raw}: cannot list the training cases ({err})") from None
    if not cases:
        raise ValueError(f"{raw}: no labelled training cases (imagesTr/, labelsTr/)")
    for case, files in cases.items():
        absent = [f for f in [*files["images"], files["label"]] if not Path(f).is_file()]
        if absent:
            raise FileNotFoundError(f"{raw}: case {case!r}: missing {absent}")
        if len(files["images"]) != len(dataset_json["channel_names"]):
            raise ValueError(f"{raw}: case {case!r} has {len(files['images'])} image file(s) for "
                             f"{len(dataset_json['channel_names'])} channel(s)")
    # nnU-Net names the cases with numpy strings; plain ones keep them out of pickles (checkpoints) and JSON
    cases = {str(case): {"images": [str(f) for f in files["images"]], "label": str(files["label"])}
             for case, files in sorted(cases.items())}
    return Dataset(name=raw.name, source=path, raw=raw, dataset_json=dataset_json, cases=cases, class_ids=class_ids)
