# Stage 2: nnU-Net v2 conversion, planning with the shared architecture, preprocessing; the recorded split.
# Each task gets its own nnU-Net roots (results/nnunet/<task>/{raw,preprocessed}) so that jobs never share
# a folder that another job writes.


rule convert_to_nnunet:
    input:
        dataset=lambda wc: f"{task_folder(wc.task)}/dataset.json",
        validated=f"{R}/checksums/{{task}}/files.json",
    output:
        raw=directory(f"{R}/nnunet/{{task}}/raw"),
    log:
        "logs/preprocess/convert_{task}.log",
    benchmark:
        f"{R}/benchmarks/preprocess/convert_{{task}}.tsv"
    resources:
        **resources_for("default"),
    threads: 1
    conda:
        NNUNET_ENV
    container:
        CONTAINER
    script:
        "../scripts/convert_to_nnunet.py"


rule plan_and_preprocess:
    input:
        raw=f"{R}/nnunet/{{task}}/raw",
    output:
        preprocessed=directory(f"{R}/nnunet/{{task}}/preprocessed"),
        checksums=f"{R}/checksums/{{task}}/preprocessed.json",
    log:
        "logs/preprocess/plan_and_preprocess_{task}.log",
    benchmark:
        f"{R}/benchmarks/preprocess/plan_and_preprocess_{{task}}.tsv"
    params:
        network=canonical(config["network"]),
    resources:
        **resources_for("default"),
    threads: 1
    conda:
        NNUNET_ENV
    container:
        CONTAINER
    script:
        "../scripts/plan_and_preprocess.py"


rule make_split:
    input:
        preprocessed=f"{R}/nnunet/{{task}}/preprocessed",
        files=f"{R}/checksums/{{task}}/files.json",
    output:
        split=f"{R}/splits/{{task}}.json",
        nnunet=f"{R}/splits/{{task}}/splits_final.json",
    log:
        "logs/preprocess/split_{task}.log",
    benchmark:
        f"{R}/benchmarks/preprocess/split_{{task}}.tsv"
    params:
        test_fraction=config["split"]["test_fraction"],
        seed=config["split"]["seed"],
        # not an output: it must outlive reruns (see ccfv/preprocess/splits.py)
        record=f"{R}/splits/{{task}}.record.json",
    resources:
        **resources_for("default"),
    threads: 1
    conda:
        NNUNET_ENV
    container:
        CONTAINER
    script:
        "../scripts/make_split.py"
