# Stage 5: transferability scores of each (bank model, target) from its features file: every metric of
# scoring.metrics (the paper's baselines, CC-FV and its ablations), whose options are this rule's params;
# scoring.max_cases scores a seeded subset of the target's training cases (all by default).


rule score:
    input:
        features=f"{R}/features/{{target}}/{{model}}.h5",
    output:
        scores=f"{R}/scores/{{target}}/{{model}}.json",
    log:
        "logs/scores/{target}/{model}.log",
    benchmark:
        f"{R}/benchmarks/scores/{{target}}/{{model}}.tsv"
    params:
        metrics=metric_definitions(),
        max_cases=config["scoring"].get("max_cases"),
        seed=config["sampling"]["seed"],
    resources:
        **resources_for("default"),
    threads: 1
    conda:
        SCORES_ENV
    container:
        CONTAINER
    script:
        "../scripts/score.py"
