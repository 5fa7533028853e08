"""`python -m daemon` is the `corral` command."""

from daemon.cli import main

if __name__ == "__main__":
    main()
