import sys

from lendstream.cli import main

if __name__ == "__main__":  # only when run (spawn skips a package's __main__ anyway)
    sys.exit(main())
