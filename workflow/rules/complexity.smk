"""Analytic per-layer time and space of every algorithm for one model and input size (`dpbench complexity`)."""


rule complexity:
    output:
        csv=COMPLEXITY_CSV,
        md=COMPLEXITY_MD,
    log:
        "logs/complexity/{model}_s{image_size}.log",
    params:
        dpbench=DPBENCH,
    threads: 1
    resources:
        runtime=stage_resources("complexity")["runtime"],
        mem_mb=stage_resources("complexity")["mem_mb"],
    conda:
        CONDA_ENV
    shell:
        "OMP_NUM_THREADS={threads} {params.dpbench} complexity --model {wildcards.model}"
        " --image-size {wildcards.image_size} --out-csv {output.csv} --out-md {output.md} > {log} 2>&1"
