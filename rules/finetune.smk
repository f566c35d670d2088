# Stage 6: the ground truth. Fine-tune every bank model on the target's training split and measure Dice on the
# held-out split, by one of two methods (finetune.method): nnunet, nnU-Net's trainer (bank U-Nets and UNETRs:
# all weights but the final convolution transferred, nothing frozen); protocol, ccfv.finetune's one recipe for
# every format (docs/finetune.md), which external members (bank.external) need.

if FT_METHOD == "nnunet":

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

else:

    # One job per (target, member, seed): ccfv.finetune.run.finetune_member. Its folder under finetune-protocol/
    # holds dice.csv and finetune.json (declared) and .work/ (not declared: the checkpoints a killed job resumes
    # from, which Snakemake must not delete); seed<N>.json is what the results stage reads.
    rule finetune_protocol:
        input:
            model=lambda wc: member_input(wc.model),
            raw=f"{R}/nnunet/{{target}}/raw",
            split=f"{R}/splits/{{target}}.json",
        output:
            dice=f"{R}/finetune/{{target}}/{{model}}/seed{{seed}}.json",
            dice_csv=f"{R}/finetune-protocol/{{target}}/{{model}}/seed{{seed}}/dice.csv",
            record=f"{R}/finetune-protocol/{{target}}/{{model}}/seed{{seed}}/finetune.json",
        log:
            "logs/finetune/{target}/{model}/seed{seed}.log",
        benchmark:
            f"{R}/benchmarks/finetune/{{target}}/{{model}}/seed{{seed}}.tsv"
        params:
            member=lambda wc: member(wc.model),
            digest=lambda wc: member_digest(wc.model),
            protocol=lambda wc: protocol_for(wc.target),
        resources:
            gpu=1,
            **resources_for("train"),
        threads: config["resources"]["threads"]
        conda:
            NNUNET_ENV
        container:
            CONTAINER
        script:
            "../scripts/finetune_protocol.py"
