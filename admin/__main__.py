"""`python -m tokenward`: the same command line as the `tokenward` script."""

from tokenward.cli import main

if __name__ == "__main__":
    main()
