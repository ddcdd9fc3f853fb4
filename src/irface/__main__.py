"""`python -m irface` is the same as the `irface` console script."""

import sys

from irface.cli import main

if __name__ == "__main__":
    sys.exit(main())
