"""Train Patch2Pix: ``python -m train_patch2pix [flags]`` (see --help and docs/training.md).

The logic lives in ``utils/train/``; this file only parses the flags, runs the trainer and
turns user errors into one-line messages with exit code 2 (utils/common/cli.py).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def _train(argv: Sequence[str] | None) -> None:
    from utils.train.cli import parse_args
    from utils.train.trainer import Trainer

    Trainer(parse_args(argv)).run()


def main(argv: Sequence[str] | None = None) -> int:
    """Run training; returns the process exit code."""
    from utils.common.cli import run_command
    from utils.train.distributed import DistributedError

    return run_command("train_patch2pix", _train, argv, extra=(DistributedError,))


if __name__ == "__main__":
    sys.exit(main())
