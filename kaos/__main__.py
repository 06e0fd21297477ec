"""`python -m kaos` runs the CLI."""
from kaos.cli import main

main()
