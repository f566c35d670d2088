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
    wildcard_constraints:
        model=model_id_pattern(ARCHITECTURES),
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


if EXTERNAL:

    # An external member (bank.external) is sampled as ccfv rank samples it: each training case read from the
    # target's converted raw dataset and preprocessed in the model's own convention, the same sampler and
    # settings (layer ratios: sampling.layer_ratios.<name>, default halving per hooked layer).
    rule sample_member_features:
        input:
            model=lambda wc: member_input(wc.model),
            card=lambda wc: f"{bank_dir(wc.model)}/member.json",
            raw=f"{R}/nnunet/{{target}}/raw",
            split=f"{R}/splits/{{target}}.json",
        output:
            features=f"{R}/features/{{target}}/{{model}}.h5",
        log:
            "logs/features/{target}/{model}.log",
        benchmark:
            f"{R}/benchmarks/features/{{target}}/{{model}}.tsv"
        wildcard_constraints:
            model=external_model_id_pattern(list(EXTERNAL)),
        params:
            sampling=lambda wc: sampling_for(wc.model),
            member=lambda wc: member(wc.model),
            digest=lambda wc: member_digest(wc.model),
        resources:
            gpu=1,
            **resources_for("inference"),
        threads: config["resources"]["threads"]
        conda:
            NNUNET_ENV
        container:
            CONTAINER
        script:
            "../scripts/sample_member_features.py"
