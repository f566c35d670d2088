# Stage 6: the ground truth. Fine-tune every bank model on the target's training split (all weights but
# the final convolution transferred, nothing frozen) and measure Dice on the held-out split.


rule finetune:
    input:
        model=lambda wc: bank_dir(wc.model),
        preprocessed=f"{R}/nnunet/{{target}}/preprocessed",
        raw=f"{R}/nnunet/{{target}}/raw",
        split=f"{R}/splits/{{target}}.json",
    output:
        dice=f"{R}/finetune/{{target}}/{{model}}/seed{{seed}}.json",
    log:
        "logs/finetune/{target}/{model}/seed{seed}.log",
    benchmark:
        f"{R}/benchmarks/finetune/{{target}}/{{model}}/seed{{seed}}.tsv"
    params:
        budget=lambda wc: budget_for("finetune", wc.target),
    resources:
        gpu=1,
        **resources_for("train"),
    threads: config["resources"]["threads"]
    conda:
        NNUNET_ENV
    container:
        CONTAINER
    script:
        "../scripts/finetune.py"
