"""``python -m workers run|worker ...``: the ``clipwatch`` command, for hosts without the console script."""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main())
