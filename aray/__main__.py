"""``python -m aray``: the command line (see :mod:`aray.cli`)."""

from .cli import main

if __name__ == "__main__":
    main()
