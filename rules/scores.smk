# Stage 5: transferability scores (CC-FV, LogME) of each (bank model, target) from its features file.


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
        metrics=config["scoring"]["metrics"],
        hse_s=config["scoring"]["hse_s"],
    resources:
        **resources_for("default"),
    threads: 1
    conda:
        CONDA_ENV
    container:
        CONTAINER
    script:
        "../scripts/score.py"
