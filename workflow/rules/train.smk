"""DP training of one model with one algorithm to one target epsilon (`dpbench train`, run by
`dpbench guard`); a retried attempt resumes from the checkpoint."""


rule train:
    output:
        json=TRAIN,
    log:
        "logs/train/{run}/{algorithm}_eps{epsilon}.log",
    params:
        dpbench=DPBENCH,
        options=train_options,
        checkpoint=train_checkpoint,
        record=train_record,
    retries: RETRIES
    threads: config["threads"]
    resources:
        **attempt_resources("train"),
        gpu=GPUS,
        device_slot=DEVICE_SLOTS,
    conda:
        CONDA_ENV
    shell:
        # HF_HUB_OFFLINE: a job never downloads weights (README, "When a run touches the network")
        "HF_HUB_OFFLINE=1 OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} " + guarded("train") + " train {params.options}"
        " --threads {threads} --checkpoint {params.checkpoint} --resume --out {output.json} > {log} 2>&1"
