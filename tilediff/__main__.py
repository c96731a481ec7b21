"""python -m tilediff: the same as the tilediff command."""
from .cli import main

main()
