"""Largest batch size within a memory budget (`dpbench maxbatch`); a checkpoint, because the
throughput run at that batch size (Figure 3, right) is only known once it has finished."""


def memory_budget_option(wildcards):
    budget = SWEEPS[wildcards.sweep]["memory_budget"]
    return "" if budget is None else f"--memory-budget {shlex.quote(str(budget))}"


checkpoint maxbatch:
    output:
        json=MAXBATCH,
    log:
        "logs/maxbatch/{sweep}/{model}/s{image_size}/{algorithm}.log",
    params:
        sweep=lambda wc: SWEEPS[wc.sweep],
        budget=memory_budget_option,
    threads: config["threads"]
    resources:
        runtime=stage_resources("maxbatch")["runtime"],
        mem_mb=stage_resources("maxbatch")["mem_mb"],
        gpu=GPUS,
        device_slot=1,
    conda:
        CONDA_ENV
    shell:
        "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} {DPBENCH} maxbatch --model {wildcards.model} --algorithm {wildcards.algorithm}"
        " --image-size {wildcards.image_size} --num-classes {params.sweep[num_classes]} {params.budget}"
        " --start {params.sweep[start]} --limit {params.sweep[limit]} --tolerance {params.sweep[tolerance]}"
        " --device {config[device]} --dtype {config[dtype]} --seed {config[seed]} --threads {threads}"
        " --out {output.json} > {log} 2>&1"
