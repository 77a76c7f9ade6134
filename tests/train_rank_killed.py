"""`python tests/train_rank_killed.py ARGS`: one rank of `dpbench train ARGS` (in float64, as
tests/float64_train.py runs the other ranks) that SIGKILLs itself at the end of its first epoch (after the
checkpoint), as a crashed node would vanish."""

import os
import signal
import sys

from dpbench.cli import build_parser
from dpbench.commands.train import config_from_args
from dpbench.train import train
from float64_train import float64

if __name__ == "__main__":
    args = build_parser().parse_args(["train", *sys.argv[1:]])
    with float64():
        train(config_from_args(args), on_epoch_end=lambda record: os.kill(os.getpid(), signal.SIGKILL))
