# Stage 3: the model bank. Per architecture (U-Net, UNETR; docs/models.md) one network pretrained per source
# task, its training snapshots (pretrain.snapshots), plus one randomly initialised network.


rule pretrain:
    input:
        preprocessed=f"{R}/nnunet/{{task}}/preprocessed",
        split=f"{R}/splits/{{task}}.json",
    output:
        model=directory(f"{R}/bank/{{arch}}-{{task}}"),
        # One more bank member per pretrain.snapshots entry, from the same training run.
        snapshots=[directory(f"{R}/bank/{{arch}}-{{task}}@{i}") for i in SNAPSHOTS],
    log:
        "logs/pretrain/{arch}-{task}.log",
    benchmark:
        f"{R}/benchmarks/pretrain/{{arch}}-{{task}}.tsv"
    params:
        budget=lambda wc: budget_for("pretrain", wc.task),
        model_id=lambda wc: pretrained_model_id(wc.arch, wc.task),
        network=lambda wc: network_params(wc.arch),
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
        model=directory(f"{R}/bank/{{arch}}-random"),
    log:
        "logs/pretrain/{arch}-random.log",
    benchmark:
        f"{R}/benchmarks/pretrain/{{arch}}-random.tsv"
    params:
        seed=config["random_init"]["seed"],
        model_id=lambda wc: random_model_id(wc.arch),
        network=lambda wc: network_params(wc.arch),
    resources:
        **resources_for("default"),
    threads: 1
    conda:
        NNUNET_ENV
    container:
        CONTAINER
    script:
        "../scripts/random_init.py"


if EXTERNAL:

    # An external member (bank.external) is read where it is; its card records what the results stage needs of
    # it (parameter count, the authors' training cases) and checks once that it loads.
    rule describe_member:
        input:
            model=lambda wc: member_input(wc.model),
        output:
            card=f"{R}/bank/{{model}}/member.json",
        log:
            "logs/pretrain/{model}.log",
        benchmark:
            f"{R}/benchmarks/pretrain/{{model}}.tsv"
        wildcard_constraints:
            model=external_model_id_pattern(list(EXTERNAL)),
        params:
            member=lambda wc: member(wc.model),
            digest=lambda wc: member_digest(wc.model),
            source_cases=lambda wc: EXTERNAL[model_architecture(wc.model)].get("source_cases"),
        resources:
            **resources_for("default"),
        threads: 1
        conda:
            NNUNET_ENV
        container:
            CONTAINER
        script:
            "../scripts/describe_member.py"
