"""Throughput and peak memory of one configuration per job (`dpbench bench`)."""


rule bench:
    output:
        json=BENCH,
    log:
        "logs/bench/{sweep}/{model}/s{image_size}_b{batch_size}/{algorithm}.log",
    params:
        sweep=lambda wc: SWEEPS[wc.sweep],
    threads: config["threads"]
    resources:
        runtime=stage_resources("bench")["runtime"],
        mem_mb=stage_resources("bench")["mem_mb"],
        gpu=GPUS,
        device_slot=1,
    conda:
        CONDA_ENV
    shell:
        "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} {DPBENCH} bench --model {wildcards.model} --algorithm {wildcards.algorithm}"
        " --image-size {wildcards.image_size} --batch-size {wildcards.batch_size}"
        " --num-classes {params.sweep[num_classes]} --steps {params.sweep[steps]} --warmup {params.sweep[warmup]}"
        " --device {config[device]} --dtype {config[dtype]} --seed {config[seed]} --threads {threads}"
        " --out {output.json} > {log} 2>&1"
