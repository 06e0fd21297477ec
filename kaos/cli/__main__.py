"""`python -m kaos.cli` runs the CLI (the test suite and `make demo` call it so)."""
from kaos.cli import main

main()
