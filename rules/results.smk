# Stage 7: results. Whether each target's fine-tuned Dice can rank its models at all (the ground-truth
# health check), the correlation between scores and fine-tuned Dice per target (the paper's Tables 1 and 2,
# or whatever tables scoring.tables names), their uncertainty and baselines, the figures, the cost of
# every stage, and the provenance record. `snakemake --report results/report.zip` collects every table
# and figure marked report() below, with its caption from rules/report/ (docs/report.md).

report: "report/workflow.rst"


# The statistics beyond the paper (docs/report.md): seeded, so reruns give the same numbers.
STATISTICS = {"n_bootstrap": 1000, "n_permutations": 2000, "n_simulations": 1000, "seed": 0}
# Fig. 3: a t-SNE of one foreground class's features of every model of one target's bank.
TSNE = {"target": TARGETS[0], "class_id": 1, "per_case": 30, "seed": 0}
TABLE_FILES = [f"{R}/tables/{name}.{ext}" for name in TABLES for ext in ("md", "tex")]
RESULTS_ENV = SCORES_ENV
# The health check's thresholds (docs/report.md); a missing key takes ccfv.results.ground_truth.HealthRule's default.
GROUND_TRUTH = config.get("ground_truth", {})
# Every model of any target's bank, once.
BANK_MODELS = sorted({m for t in TARGETS for m in bank(t)})


rule ground_truth:
    input:
        # every target's fine-tuning results, after the bank's size is checked
        dice=finetune_results,
    output:
        html=report(
            f"{R}/tables/ground_truth.html",
            caption="report/ground_truth.rst",
            category="Tables",
            subcategory="Ground truth",
        ),
        csv=f"{R}/tables/ground_truth.csv",
        markdown=f"{R}/tables/ground_truth.md",
    log:
        "logs/results/ground_truth.log",
    benchmark:
        f"{R}/benchmarks/results/ground_truth.tsv"
    params:
        targets=TARGETS,
        # (target, model) pairs; input.dice holds len(seeds) files per pair, in this order.
        pairs=[[t, m] for t in TARGETS for m in bank(t)],
        n_seeds=len(FT_SEEDS),
        rule=canonical(GROUND_TRUTH),
    resources:
        **resources_for("default"),
    threads: 1
    conda:
        RESULTS_ENV
    container:
        CONTAINER
    script:
        "../scripts/ground_truth.py"


rule tables:
    input:
        scores=[f"{R}/scores/{t}/{m}.json" for t in TARGETS for m in bank(t)],
        dice=[f"{R}/finetune/{t}/{m}/seed{s}.json" for t in TARGETS for m in bank(t) for s in FT_SEEDS],
        ground_truth=f"{R}/tables/ground_truth.csv",
    output:
        csv=[
            report(
                f"{R}/tables/{name}.csv",
                caption=f"report/{name if name in ('table1', 'table2') else 'table'}.rst",
                category="Tables",
                subcategory="The paper's tables",
            )
            for name in TABLES
        ],
        tables=TABLE_FILES,
        comparison=report(
            f"{R}/tables/paper_comparison.csv",
            caption="report/paper_comparison.rst",
            category="Tables",
            subcategory="The paper's tables",
        ),
        comparison_md=f"{R}/tables/paper_comparison.md",
        records=f"{R}/tables/scores_and_dice.csv",
        records_json=f"{R}/tables/records.json",
    log:
        "logs/results/tables.log",
    benchmark:
        f"{R}/benchmarks/results/tables.tsv"
    params:
        targets=TARGETS,
        # (target, model) in the order of input.scores; input.dice holds len(seeds) files per pair.
        pairs=[[t, m] for t in TARGETS for m in bank(t)],
        n_seeds=len(FT_SEEDS),
        tables=config["scoring"]["tables"],
        labels=metric_labels(),
    resources:
        **resources_for("default"),
    threads: 1
    conda:
        RESULTS_ENV
    container:
        CONTAINER
    script:
        "../scripts/tables.py"


rule statistics:
    input:
        records=f"{R}/tables/records.json",
        splits=[f"{R}/splits/{t}.json" for t in TASKS],
        ground_truth=f"{R}/tables/ground_truth.csv",
        # the larger-model-first ranker counts the weights in each bank model's safetensors header (an external
        # member's card, bank/<model>/member.json, holds its count and the authors' training cases)
        bank=[f"{bank_dir(m)}/member.json" if is_external(m) else bank_dir(m) for m in BANK_MODELS],
    output:
        statistics=report(
            f"{R}/tables/statistics.csv",
            caption="report/statistics.rst",
            category="Tables",
            subcategory="Beyond the paper",
        ),
        regret=report(
            f"{R}/tables/regret.csv",
            caption="report/regret.rst",
            category="Tables",
            subcategory="Beyond the paper",
        ),
        ceiling=report(
            f"{R}/tables/noise_ceiling.csv",
            caption="report/noise_ceiling.rst",
            category="Tables",
            subcategory="Beyond the paper",
        ),
        selection=report(
            f"{R}/tables/selection.csv",
            caption="report/selection.rst",
            category="Tables",
            subcategory="Beyond the paper",
        ),
        stability=report(
            f"{R}/tables/stability.csv",
            caption="report/stability.rst",
            category="Tables",
            subcategory="Beyond the paper",
        ),
        architecture=report(
            f"{R}/tables/architecture.csv",
            caption="report/architecture.rst",
            category="Tables",
            subcategory="Beyond the paper",
        ),
        markdown=[f"{R}/tables/{name}.md" for name in ("statistics", "regret", "noise_ceiling", "selection", "stability",
                                                        "architecture")],
    log:
        "logs/results/statistics.log",
    benchmark:
        f"{R}/benchmarks/results/statistics.tsv"
    params:
        targets=TARGETS,
        tables=config["scoring"]["tables"],
        labels=metric_labels(),
        # the model ids of input.bank, in its order
        models=BANK_MODELS,
        **STATISTICS,
    resources:
        **resources_for("default"),
    threads: 1
    conda:
        RESULTS_ENV
    container:
        CONTAINER
    script:
        "../scripts/statistics.py"


rule figures:
    input:
        records=f"{R}/tables/records.json",
        ground_truth=f"{R}/tables/ground_truth.csv",
    output:
        scores_vs_dice=report(
            f"{R}/figures/scores_vs_dice.png",
            caption="report/scores_vs_dice.rst",
            category="Figures",
        ),
        scores_vs_dice_svg=f"{R}/figures/scores_vs_dice.svg",
        heatmap=report(
            f"{R}/figures/dice_heatmap.png",
            caption="report/dice_heatmap.rst",
            category="Figures",
        ),
        heatmap_svg=f"{R}/figures/dice_heatmap.svg",
    log:
        "logs/results/figures.log",
    benchmark:
        f"{R}/benchmarks/results/figures.tsv"
    params:
        targets=TARGETS,
        # Fig. 2 shows the methods of the first table (the paper's Table 1).
        metrics=next(iter(config["scoring"]["tables"].values())),
        labels=metric_labels(),
    resources:
        **resources_for("default"),
    threads: 1
    conda:
        RESULTS_ENV
    container:
        CONTAINER
    script:
        "../scripts/figures.py"


rule feature_tsne:
    input:
        features=[f"{R}/features/{TSNE['target']}/{m}.h5" for m in bank(TSNE["target"])],
    output:
        png=report(
            f"{R}/figures/feature_tsne.png",
            caption="report/feature_tsne.rst",
            category="Figures",
        ),
        svg=f"{R}/figures/feature_tsne.svg",
    log:
        "logs/results/feature_tsne.log",
    benchmark:
        f"{R}/benchmarks/results/feature_tsne.tsv"
    params:
        models=bank(TSNE["target"]),
        **TSNE,
    resources:
        **resources_for("default"),
    threads: 1
    conda:
        NNUNET_ENV
    container:
        CONTAINER
    script:
        "../scripts/feature_tsne.py"


rule costs:
    input:
        # Benchmark files are products of their jobs, so this waits for every estimation and fine-tuning;
        # the other results jobs come first so that the per-stage sums see their benchmarks too.
        features=[f"{R}/benchmarks/features/{t}/{m}.tsv" for t in TARGETS for m in bank(t)],
        scores=[f"{R}/benchmarks/scores/{t}/{m}.tsv" for t in TARGETS for m in bank(t)],
        finetune=[f"{R}/benchmarks/finetune/{t}/{m}/seed{s}.tsv" for t in TARGETS for m in bank(t) for s in FT_SEEDS],
        results=[f"{R}/tables/records.json", f"{R}/tables/statistics.csv", f"{R}/figures/scores_vs_dice.png",
                 f"{R}/figures/feature_tsne.png"],
    output:
        stages=report(
            f"{R}/tables/costs_per_stage.csv",
            caption="report/costs_per_stage.rst",
            category="Cost",
        ),
        pairs=report(
            f"{R}/tables/costs_per_pair.csv",
            caption="report/costs_per_pair.rst",
            category="Cost",
        ),
        markdown=[f"{R}/tables/costs_per_stage.md", f"{R}/tables/costs_per_pair.md"],
    log:
        "logs/results/costs.log",
    benchmark:
        f"{R}/benchmarks/results/costs.tsv"
    params:
        pairs=[[t, m] for t in TARGETS for m in bank(t)],
        seeds=FT_SEEDS,
    resources:
        **resources_for("default"),
    threads: 1
    conda:
        RESULTS_ENV
    container:
        CONTAINER
    script:
        "../scripts/costs.py"


rule provenance:
    input:
        results=[f for f in final_outputs() if not f.endswith("provenance.json")],
        checksums=[f"{R}/checksums/{t}/{name}.json" for t in TASKS for name in ("files", "preprocessed")],
    output:
        record=report(
            f"{R}/provenance.json",
            caption="report/provenance.rst",
            category="Provenance",
        ),
    log:
        "logs/results/provenance.log",
    benchmark:
        f"{R}/benchmarks/results/provenance.tsv"
    params:
        config=canonical(config),
        # the results stage's own settings, with their seeds
        analysis={"statistics": STATISTICS, "tsne": TSNE},
        source=workflow.basedir,
        # conda env file name and container of every rule, for the record
        rules=lambda wc: {r.name: {"conda": r.conda_env and Path(str(r.conda_env)).name, "container": r.container_img}
                          for r in workflow.rules if r.name != "all"},
    resources:
        **resources_for("default"),
    threads: 1
    conda:
        NNUNET_ENV
    container:
        CONTAINER
    script:
        "../scripts/provenance.py"
