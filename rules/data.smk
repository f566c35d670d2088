# Stage 1: the tasks in MSD layout. The demo generates them; MSD tasks are fetched (or found in place).
# Every task, demo or MSD, is validated before anything reads it. Each task's source is data.source unless
# data.sources names another (e.g. synthetic source tasks for a real MSD target).
SYNTHETIC_TASKS = [t for t in TASKS if task_source(config, t) == "synthetic"]
MSD_TASKS = [t for t in TASKS if task_source(config, t) == "msd"]

if SYNTHETIC_TASKS:

    rule synthesize_task:
        output:
            dataset=f"{R}/data/{{task}}/dataset.json",
        log:
            "logs/data/synthesize_{task}.log",
        benchmark:
            f"{R}/benchmarks/data/synthesize_{{task}}.tsv"
        wildcard_constraints:
            task="|".join(SYNTHETIC_TASKS),
        params:
            n_cases=config["data"]["synthetic"]["n_cases"],
            seed=config["data"]["synthetic"]["seed"],
            shape=config["data"]["synthetic"].get("shape"),
        resources:
            **resources_for("default"),
        threads: 1
        conda:
            DATA_ENV
        container:
            CONTAINER
        script:
            "../scripts/synthesize_task.py"


if MSD_TASKS:

    rule fetch_msd_task:
        output:
            dataset=f"{config['data']['msd']['root']}/{{task}}/dataset.json",
            record=f"{R}/checksums/{{task}}/archive.json",
        log:
            "logs/data/fetch_{task}.log",
        benchmark:
            f"{R}/benchmarks/data/fetch_{{task}}.tsv"
        wildcard_constraints:
            task="|".join(MSD_TASKS),
        params:
            base_url=config["data"]["msd"].get("base_url"),
            local=config["data"]["msd"].get("local"),
        resources:
            **resources_for("default"),
        threads: 1
        conda:
            DATA_ENV
        container:
            CONTAINER
        script:
            "../scripts/fetch_msd_task.py"


rule validate_task:
    input:
        dataset=lambda wc: f"{task_folder(wc.task)}/dataset.json",
    output:
        files=f"{R}/checksums/{{task}}/files.json",
    log:
        "logs/data/validate_{task}.log",
    benchmark:
        f"{R}/benchmarks/data/validate_{{task}}.tsv"
    resources:
        **resources_for("default"),
    threads: 1
    conda:
        DATA_ENV
    container:
        CONTAINER
    script:
        "../scripts/validate_task.py"
