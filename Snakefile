# ccfv: which pretrained 3D segmentation model to fine-tune? The CC-FV benchmark (Yang et al., MICCAI 2023).
# The demo runs with the defaults; the paper's setup with --configfile config/msd.yaml.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/preprocess.smk"
include: "rules/bank.smk"
include: "rules/features.smk"
include: "rules/scores.smk"
include: "rules/finetune.smk"
include: "rules/results.smk"


rule all:
    input:
        final_outputs(),
    default_target: True
