# Stage 7: correlation between scores and fine-tuned Dice per target: the paper's Table 1 (baselines and
# CC-FV) and Table 2 (ablations), or whatever tables scoring.tables names.


rule tables:
    input:
        scores=[f"{R}/scores/{t}/{m}.json" for t in TASKS for m in bank(t)],
        dice=[f"{R}/finetune/{t}/{m}/seed{s}.json" for t in TASKS for m in bank(t) for s in FT_SEEDS],
    output:
        tables=[f"{R}/tables/{name}.{ext}" for name in TABLES for ext in ("csv", "md")],
        records=f"{R}/tables/scores_and_dice.csv",
    log:
        "logs/results/tables.log",
    benchmark:
        f"{R}/benchmarks/results/tables.tsv"
    params:
        targets=TASKS,
        # (target, model) in the order of input.scores; input.dice holds len(seeds) files per pair.
        pairs=[[t, m] for t in TASKS for m in bank(t)],
        n_seeds=len(FT_SEEDS),
        tables=config["scoring"]["tables"],
        labels=metric_labels(),
    resources:
        **resources_for("default"),
    threads: 1
    conda:
        SCORES_ENV
    container:
        CONTAINER
    script:
        "../scripts/tables.py"
