"""``python -m allcores``: the same as the ``allcores`` command."""

import sys

from allcores.cli import main

if __name__ == "__main__":
    sys.exit(main())
