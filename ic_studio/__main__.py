"""``python -m ic_studio --run RUN [--port N]``: the same as ``ic studio``."""
import sys

from flows.cli import main

sys.exit(main(["studio", *sys.argv[1:]]))
