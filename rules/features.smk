# Stage 4: voxel features from hooked decoder stages during sliding-window inference of each bank model
# over the target's training split.


rule sample_features:
    input:
        model=lambda wc: bank_dir(wc.model),
        preprocessed=f"{R}/nnunet/{{target}}/preprocessed",
        split=f"{R}/splits/{{target}}.json",
    output:
        features=f"{R}/features/{{target}}/{{model}}.h5",
    log:
        "logs/features/{target}/{model}.log",
    benchmark:
        f"{R}/benchmarks/features/{{target}}/{{model}}.tsv"
    params:
        sampling=lambda wc: sampling_for(wc.model),
    resources:
        gpu=1,
        **resources_for("inference"),
    threads: config["resources"]["threads"]
    conda:
        NNUNET_ENV
    container:
        CONTAINER
    script:
        "../scripts/sample_features.py"
