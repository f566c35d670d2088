"""What ``ccfv rank`` writes and prints: ``ranking.csv``, ``ranking.json``, ``agreement.csv``, ``ranking.png``
and the ranked table in the terminal."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io import write_json, write_text
from ..results.formatting import fmt_number
from .agreement import AGREEMENT_BOOTSTRAP, RANK_BASELINES


@dataclass
class Ranking:
    rows: list[dict]
    failed: list[dict]
    metrics: list[str]
    correlations: dict | None
    meta: dict
    #: :func:`dice_health` of the ``--dice`` values (None without ``--dice``).
    ground_truth: dict | None = None
    #: :func:`baseline_agreement` with ``--dice`` (None without).
    baselines: dict | None = None
    #: :func:`method_ranking_stability` with ``--dice`` (None without, or when undefined).
    method_ranking_stability: float | None = None

    @property
    def exit_status(self) -> int:
        if not self.rows:
            return 2
        return 1 if self.failed else 0


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------


def ranking_csv(ranking: Ranking) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["rank", "model", "kind", "architecture"]
    for metric in ranking.metrics:
        header += [metric, f"{metric}_rank"]
    header += ["dice", "parameters", "path", "checkpoint_sha256", "warnings"]
    confirmed = ranking.meta.get("confirm") is not None
    if confirmed:
        header.append("finetuned_dice")
    writer.writerow(header)
    for row in ranking.rows:
        line = [row["ranks"][ranking.metrics[0]], row["model"], row["kind"], row["architecture"]]
        for metric in ranking.metrics:
            line += [repr(row["scores"][metric]), row["ranks"][metric]]
        line += ["" if row["dice"] is None else repr(row["dice"]),
                 "" if row.get("parameters") is None else row["parameters"], row["path"], row["sha256"] or "",
                 "; ".join(row.get("warnings") or [])]
        if confirmed:
            line.append("" if row.get("finetuned_dice") is None else repr(row["finetuned_dice"]))
        writer.writerow(line)
    return buffer.getvalue()


def ranking_json(ranking: Ranking) -> dict:
    return {**ranking.meta, "models": ranking.rows, "failed": ranking.failed,
            "correlations": ranking.correlations, "baselines": ranking.baselines,
            "method_ranking_stability": ranking.method_ranking_stability,
            "agreement_bootstrap": AGREEMENT_BOOTSTRAP if ranking.correlations else None,
            "ground_truth": ranking.ground_truth}


#: The measures of ``agreement.csv``, each a value and, but for the regret, a 95% bootstrap interval.
AGREEMENT_MEASURES = ("tau", "pearson", "kendall", "rel_at_1", "top3")


def agreement_csv(ranking: Ranking) -> str:
    """With ``--dice``: one line per method (the metrics, then the static rankers) with every agreement
    measure, its interval, the top-1 regret, the leave-one-out stability, the stability of the methods'
    ranking (the same on every line) and ``ground_truth``: ``ok`` or ``cannot rank`` (the health check of
    the known Dice, as in the workflow's tables)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["method", "kind", "n"]
    for name in AGREEMENT_MEASURES:
        header += [name, f"{name}_low", f"{name}_high"]
    header += ["top1_regret", "loo_tau_min", "loo_tau_max", "loo_max_change", "most_influential",
               "method_ranking_stability", "ground_truth"]
    writer.writerow(header)
    verdict = "ok" if ranking.ground_truth is None or ranking.ground_truth["can_rank"] else "cannot rank"
    methods = [(m, "metric", c) for m, c in (ranking.correlations or {}).items()]
    methods += [(m, "baseline", c) for m, c in (ranking.baselines or {}).items()]

    def cell(value):
        return "" if value is None else repr(value) if isinstance(value, float) else value

    for name, kind, c in methods:
        line = [name, kind, c["n"]]
        for measure in AGREEMENT_MEASURES:
            ci = c.get(f"{measure}_ci")
            line += [cell(c.get(measure)), *(cell(v) for v in (ci or [None, None]))]
        line += [cell(c.get(k)) for k in ("top1_regret", "loo_tau_min", "loo_tau_max", "loo_max_change",
                                          "most_influential")]
        line += [cell(ranking.method_ranking_stability), verdict]
        writer.writerow(line)
    return buffer.getvalue()


def plot_ranking(ranking: Ranking, path: Path) -> Path:
    """One panel per metric: standardised score per model (bars, best on top), or against the known Dice
    (scatter) when ``--dice`` gave it. Matplotlib's warnings (a layout that does not fit, a glyph a font
    lacks) are kept out of the terminal, where the ranked table is the output: the figure is drawn anyway."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _plot_ranking(ranking, path)


def _plot_ranking(ranking: Ranking, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..results.figures import standardise

    rows = ranking.rows
    n = len(ranking.metrics)
    with_dice = ranking.correlations is not None and sum(r["dice"] is not None for r in rows) >= 2
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, max(3.4, 0.45 * len(rows) + 2.2) if not with_dice else 3.4),
                             squeeze=False)
    for ax, metric in zip(axes[0], ranking.metrics):
        z = standardise([r["scores"][metric] for r in rows])
        if with_dice:
            known = [(zi, r["dice"], r["model"]) for zi, r in zip(z, rows) if r["dice"] is not None]
            ax.scatter([k[0] for k in known], [k[1] for k in known], color="tab:blue")
            for x, y, label in known:
                ax.annotate(label, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
            c = ranking.correlations[metric]
            tau = "n/a" if c["tau"] is None else f"{c['tau']:.2f}"
            ax.set_title(f"{metric} (τw {tau})", fontsize=9)
            ax.set_xlabel("standardised score")
            ax.set_ylabel("known Dice")
        else:
            order = np.argsort(z)
            ax.barh([rows[i]["model"] for i in order], z[order], color="tab:blue")
            ax.set_title(metric, fontsize=9)
            ax.set_xlabel("standardised score")
            ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(f"ccfv rank on {ranking.meta['dataset']} ({len(ranking.meta['cases'])} cases)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    scratch = path.with_name(f".{path.name}.partial.png")
    fig.savefig(scratch, dpi=150)
    plt.close(fig)
    scratch.replace(path)
    return path


def write_outputs(ranking: Ranking, out: Path) -> None:
    out = Path(out)
    write_text(out / "ranking.csv", ranking_csv(ranking))
    write_json(out / "ranking.json", ranking_json(ranking))
    if ranking.correlations:
        write_text(out / "agreement.csv", agreement_csv(ranking))
    else:  # a rerun without --dice into the same folder: no agreement from an earlier run stays behind
        (out / "agreement.csv").unlink(missing_ok=True)
    if ranking.rows:
        plot_ranking(ranking, out / "ranking.png")


def _fmt(value) -> str:
    return fmt_number(value, missing="n/a")


def _with_interval(entry: dict, name: str) -> str:
    """``0.4000 [0.10, 0.80]``: a measure and its bootstrap interval, when it has one."""
    ci = entry.get(f"{name}_ci")
    return _fmt(entry.get(name)) + ("" if not ci else f" [{ci[0]:.2f}, {ci[1]:.2f}]")


#: A confirmed Dice below this is a network that predicts (almost) only background: the ground-truth health
#: check's threshold for a model that did not learn (config ``ground_truth``, docs/report.md).
UNTRAINED_DICE = 0.05


def _confirm_summary(ranking: Ranking, confirm: dict) -> str:
    """What ``--confirm`` measured, in one sentence: the protocol's budget and split, and whether the best
    fine-tuned Dice among the top K is the first pick's."""
    split = confirm["split"]
    done = [(r["model"], r["finetuned_dice"]) for r in ranking.rows[:confirm["k"]]
            if r.get("finetuned_dice") is not None]
    text = (f"Fine-tuned Dice: the top {confirm['k']} by {ranking.metrics[0]}, each fine-tuned "
            f"{confirm['protocol']['iterations']} iterations (seed {confirm['seed']}) on {len(split['train'])} "
            f"case(s), Dice on {len(split['test'])} held-out case(s) (docs/finetune.md).")
    if len(done) >= 2:
        best = max(done, key=lambda d: d[1])
        text += (f" The first pick, {done[0][0]}, is also the best of them." if best[0] == done[0][0] else
                 f" The best of them is {best[0]} ({best[1]:.4f}), not the first pick {done[0][0]} ({done[0][1]:.4f}).")
    untrained = [model for model, dice in done if dice < UNTRAINED_DICE]
    if untrained:
        text += (f" Caution: {', '.join(untrained)} ended below Dice {UNTRAINED_DICE} (background only), which says "
                 "more about the protocol than about the model: in "
                 f"{confirm['protocol']['iterations']} iterations a network that starts from a new head may not yet "
                 "predict a small structure, and a body rate too high for a network's small weights rewrites them "
                 "(on Task04_Hippocampus at 75 iterations every U-Net, UNETR and hippodeep stayed at 0 while "
                 "MeshNets reached 0.54-0.80; hippodeep reached 0.30 at --learning-rate 1e-5: docs/real-study.md); "
                 "confirm again with a larger --confirm-iterations, a random head (--head-init random) and several "
                 "rates to choose from per model (--learning-rate 3e-3 1e-3 1e-4) before you rule such a model out.")
    return text


def print_ranking(ranking: Ranking, out: Path, console=None) -> None:
    """The ranked table (rich), the models that could not be ranked, and the correlations with ``--dice``."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:  # a log file or a pipe: do not cut the table at 80 columns
            console = Console(width=200)
    table = Table(title=f"Models ranked on {ranking.meta['dataset']} by {ranking.metrics[0]} (higher is better)")
    table.add_column("#", justify="right")
    table.add_column("model", no_wrap=True)
    table.add_column("architecture")
    for metric in ranking.metrics:
        table.add_column(metric, justify="right")
    has_dice = any(r["dice"] is not None for r in ranking.rows)
    if has_dice:
        table.add_column("known Dice", justify="right")
    confirm = ranking.meta.get("confirm")
    if confirm is not None:
        table.add_column("fine-tuned Dice", justify="right")
    has_warnings = any(r.get("warnings") for r in ranking.rows)
    if has_warnings:
        table.add_column("warning")
    for row in ranking.rows:
        cells = [str(row["ranks"][ranking.metrics[0]]), row["model"], row["architecture"]]
        cells += [f"{row['scores'][m]:.4g} ({row['ranks'][m]})" for m in ranking.metrics]  # score (its rank)
        if has_dice:
            cells.append("" if row["dice"] is None else f"{row['dice']:.4f}")
        if confirm is not None:
            cells.append("" if row.get("finetuned_dice") is None else f"{row['finetuned_dice']:.4f}")
        if has_warnings:
            cells.append("; ".join(w.split(":")[0] for w in row.get("warnings") or []))
        table.add_row(*cells)
    console.print(table)
    recommendation = ranking.meta.get("recommendation")
    if recommendation:
        console.print(recommendation["sentence"], style="bold", highlight=False, soft_wrap=True)
    for row in ranking.rows:
        for warning in row.get("warnings") or []:
            console.print(f"[yellow]warning[/yellow] {row['model']}: {warning}", highlight=False)
    if ranking.correlations:
        corr = Table(title="Agreement with the known Dice (95% bootstrap interval over the models)")
        for column in ("metric", "weighted tau", "Pearson", "Kendall tau-b", "Rel@1", "top-3 hit", "top-1 regret",
                       "LOO max change", "models"):
            corr.add_column(column, justify="right" if column != "metric" else "left")
        methods = [(m, c) for m, c in ranking.correlations.items()]
        methods += [(RANK_BASELINES.get(m, m), c) for m, c in (ranking.baselines or {}).items()]
        for name, c in methods:
            corr.add_row(name, *(_with_interval(c, k) for k in ("tau", "pearson", "kendall", "rel_at_1", "top3")),
                         _fmt(c.get("top1_regret")), _fmt(c.get("loo_max_change")), str(c["n"]))
        console.print(corr)
        if ranking.method_ranking_stability is not None:
            console.print(f"Leave one model out: the methods' order by weighted tau agrees with the full one at a "
                          f"mean Kendall's tau-b of {ranking.method_ranking_stability:.2f} (1: no single model "
                          "decides which method looks best; docs/rank.md).", highlight=False)
    health = ranking.ground_truth
    if health is not None:
        if health["can_rank"]:
            console.print(f"The known Dice can rank the models (Dice {_fmt(health['dice_min'])} to "
                          f"{_fmt(health['dice_max'])}; docs/report.md, ground truth).", highlight=False)
        else:
            console.print("[red]The known Dice cannot rank the models[/red]: " + "; ".join(health["reasons"])
                          + ". The agreement above measures noise, not the metrics.", highlight=False)
    if confirm is not None:
        console.print(_confirm_summary(ranking, confirm), highlight=False)
        for failure in confirm["failed"]:
            console.print(f"[red]not fine-tuned[/red] {failure['model']}: {failure['error']}", highlight=False)
    for failure in ranking.failed:
        console.print(f"[red]not ranked[/red] {failure['model']}: {failure['error']}", highlight=False)
    console.print(f"written: {out / 'ranking.csv'}, {out / 'ranking.json'}"
                  + (f", {out / 'agreement.csv'}" if ranking.correlations else "")
                  + (f", {out / 'ranking.png'}" if ranking.rows else "") + f", features in {out / 'features'}/")
