"""`python -m rlm ...`: the `rlm` command, for when its script is not on PATH."""

import sys

from rlm.cli import main

if __name__ == "__main__":
    sys.exit(main())
