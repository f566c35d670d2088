"""The three views of a features file that the scores read: CC-FV's per-layer samples (:func:`ccfv_layers`), the
baselines' head samples (:func:`head_samples`) and the released code's layers (:func:`released_layers`)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..features.file import BACKGROUND_KEY, CLASS_PREFIX, GLOBAL_KEY, FeaturesFile, class_key

# --------------------------------------------------------------------------------------------------
# Views for the scores
# --------------------------------------------------------------------------------------------------


def ccfv_layers(ff: FeaturesFile) -> list[dict[str, list]]:
    """The input of ``ccfv.scores.metrics.ccfv.ccfv_score``: one entry per layer, bottleneck -> output.

    Each entry is ``{"cases": [{class_id: [n_k, C_l]} per case], "global": [[L, C_l] per case]}``;
    a case's mapping holds only the classes present in it. When every case has them, also
    ``"background": [[n_b, C_l] per case]`` (CC-FV-D) and ``"global_input_std": [[L] per case]`` (the input's
    local standard deviation at the global voxels, for ``global_voxels="varied"``).
    """
    layers = []
    with_background = all(BACKGROUND_KEY in r.features[0] for r in ff.cases.values())
    with_input_std = all(GLOBAL_KEY in r.input_std for r in ff.cases.values())
    for index in range(len(ff.meta["layers"])):
        per_case, global_ = [], []
        for record in ff.cases.values():
            features = record.features[index]
            per_case.append({int(k): features[class_key(k)] for k in record.class_ids if class_key(k) in features})
            if GLOBAL_KEY not in features:
                raise ValueError(f"{ff.path}: case {record.case_id!r} has no '{GLOBAL_KEY}' features")
            global_.append(features[GLOBAL_KEY])
        layer = {"cases": per_case, "global": global_}
        if with_background:
            layer["background"] = [r.features[index][BACKGROUND_KEY] for r in ff.cases.values()]
        if with_input_std:
            layer["global_input_std"] = [r.input_std[GLOBAL_KEY] for r in ff.cases.values()]
        layers.append(layer)
    return layers


def head_samples(
    ff: FeaturesFile, keys: Sequence[str] | None = None, with_cases: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Last-layer features with their labels, over all cases (input of LogME, LEEP, GBC, TransRate).

    Args:
        ff: a read features file.
        keys: keys to take from every case; default every class key and "background". A class key of
            a class absent from a case is skipped; any other missing key is an error.

    Returns:
        (features float32 [n, C_last], labels int64 [n], probs float32 [n, K] or None). ``probs`` is
        None unless every selected key of every case has probabilities. With ``with_cases`` a fourth
        item, the index of each sample's case in the file's order (int64 [n]; for k-NN's leave one case out).
    """
    last = len(ff.meta["layers"]) - 1
    width = ff.meta["channels"][last]
    feats, labels, probs, cases = [], [], [], []
    have_probs = True
    for case_index, record in enumerate(ff.cases.values()):
        wanted = list(keys) if keys is not None else [class_key(k) for k in record.class_ids] + [BACKGROUND_KEY]
        for key in wanted:
            if key not in record.features[last]:
                if key.startswith(CLASS_PREFIX) and key in [class_key(k) for k in record.absent_classes]:
                    continue
                raise ValueError(f"{ff.path}: case {record.case_id!r} has no features for key {key!r}")
            f = record.features[last][key]
            n = f.shape[0]
            feats.append(f)
            cases.append(np.full(n, case_index, dtype=np.int64))
            labels.append(np.asarray(record.labels[key][:n], dtype=np.int64))
            if key in record.probs:
                probs.append(record.probs[key][:n])
            else:
                have_probs = False
    if not feats:
        empty = (np.zeros((0, width), np.float32), np.zeros(0, np.int64), None)
        return (*empty, np.zeros(0, np.int64)) if with_cases else empty
    features = np.concatenate(feats).astype(np.float32, copy=False)
    out_probs = np.concatenate(probs).astype(np.float32, copy=False) if have_probs and probs else None
    if with_cases:
        return features, np.concatenate(labels), out_probs, np.concatenate(cases)
    return features, np.concatenate(labels), out_probs


def released_layers(ff: FeaturesFile) -> list[dict[str, list]]:
    """CC-FV layers as the released code sees them: each case's background samples under class 0 (its
    case means average every sampled voxel, background included), and only the cases that hold every
    foreground class (its consistency sum needs each class in each case; a case without a lesion would
    make it fail, so such cases are left out, which the paper's eq. 2 handles by skipping pairs)."""
    complete = [not record.absent_classes for record in ff.cases.values()]
    if sum(complete) < 2:
        raise ValueError(f"{ff.path}: ccfv_released needs at least 2 cases holding every class, "
                         f"found {sum(complete)} of {len(complete)}")
    layers = []
    for index, layer in enumerate(ccfv_layers(ff)):
        cases = []
        for case_map, record, keep in zip(layer["cases"], ff.cases.values(), complete):
            if not keep:
                continue
            background = record.features[index].get(BACKGROUND_KEY)
            if background is not None and len(background):
                case_map = {**case_map, 0: background}
            cases.append(case_map)
        layers.append({"cases": cases, "global": layer["global"]})
    return layers
