"""Train the coarse stage with NCNet's weak supervision: ``python -m train_ncnet [flags]``.

Writes ``ncn_ivd_5ep.pth``-format weights (a bare state_dict of ``extract.*`` and ``ncn.*``)
that ``python -m train_patch2pix --pretrain`` starts from. The logic lives in
``utils/train/ncnet_trainer.py``; this file parses the flags, runs the trainer and turns user
errors into one-line messages with exit code 2 (utils/common/cli.py).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def _train(argv: Sequence[str] | None) -> None:
    from utils.train.ncnet_cli import parse_args
    from utils.train.ncnet_trainer import NcnetTrainer

    NcnetTrainer(parse_args(argv)).run()


def main(argv: Sequence[str] | None = None) -> int:
    """Run training; returns the process exit code."""
    from utils.common.cli import run_command

    return run_command("train_ncnet", _train, argv)


if __name__ == "__main__":
    sys.exit(main())
