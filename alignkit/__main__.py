"""`python -m alignkit ...` (and `accelerate launch -m alignkit ...`) is the `alignkit` command."""

import sys

from alignkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
