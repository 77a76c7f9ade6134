"""DP training of one model with one algorithm to one target epsilon (`dpbench train`, run by
`dpbench guard`); a retried attempt resumes from the checkpoint. A run of several ranks (the entry's
`ranks`, common.smk) is rule train_ranks: the same job, asking SLURM for its tasks, nodes and GPUs."""


rule train:
    output:
        json=TRAIN,
    log:
        "logs/train/{run}/{algorithm}_eps{epsilon}.log",
    wildcard_constraints:
        run=run_pattern(MULTI_RANK_RUNS, inside=False),
    params:
        dpbench=DPBENCH,
        options=train_options,
        checkpoint=train_checkpoint,
        record=train_record,
        launch=train_launch,
        rank_threads=train_rank_threads,
    retries: RETRIES
    threads: train_threads
    resources:
        **attempt_resources("train"),
        gpu=GPUS,
        device_slot=DEVICE_SLOTS,
    conda:
        CONDA_ENV
    shell:
        # HF_HUB_OFFLINE: a job never downloads weights (README, "When a run touches the network")
        "HF_HUB_OFFLINE=1 OMP_NUM_THREADS={params.rank_threads} MKL_NUM_THREADS={params.rank_threads} "
        + guarded("train", "{params.launch}") + " train {params.options} --threads {params.rank_threads}"
        " --checkpoint {params.checkpoint} --resume --out {output.json} > {log} 2>&1"


if MULTI_RANK_RUNS:

    use rule train as train_ranks with:
        wildcard_constraints:
            run=run_pattern(MULTI_RANK_RUNS, inside=True),
        resources:
            **rank_resources(),
            device_slot=DEVICE_SLOTS,
