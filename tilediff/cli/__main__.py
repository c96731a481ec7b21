"""python -m tilediff.cli: the same as the tilediff command."""
from . import main

main()
