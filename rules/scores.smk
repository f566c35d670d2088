# Stage 5: transferability scores of each (bank model, target) from its features file: every metric of
# scoring.metrics (the paper's baselines, CC-FV and its ablations), whose options are this rule's params.


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
    resources:
        **resources_for("default"),
    threads: 1
    conda:
        SCORES_ENV
    container:
        CONTAINER
    script:
        "../scripts/score.py"
