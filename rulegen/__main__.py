"""`python -m rulegen ...` runs the command line."""

from rulegen.cli import main

main()
