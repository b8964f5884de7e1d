"""`python -m drimbox` is the `drimbox` command."""

from drimbox.cli import main

main()
