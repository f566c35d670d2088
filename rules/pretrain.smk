# Stage 3: the model bank. One U-Net pretrained per source task, plus one randomly initialised U-Net.


rule pretrain:
    input:
        preprocessed=f"{R}/nnunet/{{task}}/preprocessed",
        split=f"{R}/splits/{{task}}.json",
    output:
        model=directory(f"{R}/bank/{ARCH}-{{task}}"),
    log:
        "logs/pretrain/{task}.log",
    benchmark:
        f"{R}/benchmarks/pretrain/{{task}}.tsv"
    params:
        budget=lambda wc: budget_for("pretrain", wc.task),
        model_id=lambda wc: pretrained_model(wc.task),
    resources:
        gpu=1,
        **resources_for("train"),
    threads: config["resources"]["threads"]
    conda:
        NNUNET_ENV
    container:
        CONTAINER
    script:
        "../scripts/pretrain.py"


rule random_init:
    input:
        # The random member only needs the shared architecture; any task's plans carry it.
        preprocessed=f"{R}/nnunet/{TASKS[0]}/preprocessed",
    output:
        model=directory(f"{R}/bank/{RANDOM_MODEL}"),
    log:
        "logs/pretrain/random.log",
    benchmark:
        f"{R}/benchmarks/pretrain/random.tsv"
    params:
        seed=config["random_init"]["seed"],
        model_id=RANDOM_MODEL,
    resources:
        **resources_for("default"),
    threads: 1
    conda:
        NNUNET_ENV
    container:
        CONTAINER
    script:
        "../scripts/random_init.py"
