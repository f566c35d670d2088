# Stage 7: correlation between scores and fine-tuned Dice per target (the paper's Table 1).


rule table1:
    input:
        scores=[f"{R}/scores/{t}/{m}.json" for t in TASKS for m in bank(t)],
        dice=[f"{R}/finetune/{t}/{m}/seed{s}.json" for t in TASKS for m in bank(t) for s in FT_SEEDS],
    output:
        csv=f"{R}/tables/table1.csv",
        md=f"{R}/tables/table1.md",
        records=f"{R}/tables/scores_and_dice.csv",
    log:
        "logs/results/table1.log",
    benchmark:
        f"{R}/benchmarks/results/table1.tsv"
    params:
        targets=TASKS,
        # (target, model) in the order of input.scores; input.dice holds len(seeds) files per pair.
        pairs=[[t, m] for t in TASKS for m in bank(t)],
        n_seeds=len(FT_SEEDS),
        metrics=config["scoring"]["metrics"],
    resources:
        **resources_for("default"),
    threads: 1
    conda:
        CONDA_ENV
    container:
        CONTAINER
    script:
        "../scripts/table1.py"
