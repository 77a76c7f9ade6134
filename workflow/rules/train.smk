"""DP training of one model with one algorithm to one target epsilon (`dpbench train`, run by
`dpbench guard`); a retried attempt resumes from the checkpoint. A run of several ranks (the entry's
`ranks`, common.smk) is rule train_ranks: the same job on its ranks, asking SLURM for its tasks, nodes
and GPUs. (Rule train's command and params are those of the versions before train_ranks existed, so that
finished results are not rerun.)"""


def train_shell(threads, guard_options=""):
    """The command of a train job; `threads` is the template of each rank's torch threads."""
    # HF_HUB_OFFLINE: a job never downloads weights (README, "When a run touches the network")
    return (f"HF_HUB_OFFLINE=1 OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} " + guarded("train", guard_options)
            + f" train {{params.options}} --threads {threads} --checkpoint {{params.checkpoint}} --resume"
            " --out {output.json} > {log} 2>&1")


TRAIN_PARAMS = dict(dpbench=DPBENCH, options=train_options, checkpoint=train_checkpoint, record=train_record)


rule train:
    output:
        json=TRAIN,
    log:
        "logs/train/{run}/{algorithm}_eps{epsilon}.log",
    wildcard_constraints:
        run=run_pattern(MULTI_RANK_RUNS, inside=False),
    params:
        **TRAIN_PARAMS,
    retries: RETRIES
    threads: config["threads"]
    resources:
        **attempt_resources("train"),
        gpu=GPUS,
        device_slot=DEVICE_SLOTS,
    conda:
        CONDA_ENV
    shell:
        train_shell("{threads}")


if MULTI_RANK_RUNS:

    rule train_ranks:
        output:
            json=TRAIN,
        log:
            "logs/train/{run}/{algorithm}_eps{epsilon}.log",
        wildcard_constraints:
            run=run_pattern(MULTI_RANK_RUNS, inside=True),
        params:
            **TRAIN_PARAMS,
            launch=train_launch,
            rank_threads=config["threads"],
        retries: RETRIES
        threads: train_threads
        resources:
            **rank_resources(),
            device_slot=DEVICE_SLOTS,
        conda:
            CONDA_ENV
        shell:
            train_shell("{params.rank_threads}", "{params.launch}")
