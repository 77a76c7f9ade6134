"""Analytic per-layer time and space of every algorithm for one model and input size (`dpbench complexity`).
CPU only and seconds long: on a cluster it runs where Snakemake runs, or, when the user names a CPU
partition (DPBENCH_SLURM_CPU_PARTITION, see slurm/config.yaml), as a CPU job there; never on a GPU node."""

CPU_PARTITION = os.environ.get("DPBENCH_SLURM_CPU_PARTITION")

if not CPU_PARTITION:

    localrules:
        complexity,


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
        **({"slurm_partition": CPU_PARTITION, "gpu": 0} if CPU_PARTITION else {}),
    conda:
        CONDA_ENV
    shell:
        "OMP_NUM_THREADS={threads} {params.dpbench} complexity --model {wildcards.model}"
        " --image-size {wildcards.image_size} --out-csv {output.csv} --out-md {output.md} > {log} 2>&1"
