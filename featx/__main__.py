"""python -m featx: the featx command."""
from .cli import main

if __name__ == "__main__":
    main(prog_name="featx")
