"""Train Patch2Pix: ``python -m train_patch2pix [flags]`` (see --help and training.md).

The logic lives in ``utils/train/``; this file only parses the flags, runs the trainer and
turns user errors into one-line messages with exit code 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run training; returns the process exit code."""
    from utils.train.cli import UsageError, parse_args

    prog = "train_patch2pix"
    try:
        args = parse_args(argv)
        from utils.train.trainer import Trainer

        Trainer(args).run()
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
