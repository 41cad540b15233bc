"""``python -m sfc_plugin <command>``: the ``sfc`` command."""

import sys

from sfc_plugin.cli import main

if __name__ == "__main__":
    sys.exit(main())
