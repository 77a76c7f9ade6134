# Placeholder until the pipeline issue: the main job is the engine demonstration.
rule all:
    shell: "dpbench demo"
