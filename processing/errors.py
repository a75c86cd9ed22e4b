"""User-facing errors: one clear line, no traceback, exit code 2."""
import argparse
import functools
import sys


class UserError(Exception):
    """Bad input from the user: the message says what is wrong and how to fix it."""


EXIT_USER_ERROR = 2


class CommandLineParser(argparse.ArgumentParser):
    """argparse whose bad-flag errors are UserErrors too: one line, instead of the usage block and a line."""

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")


def cli_entry(main):
    """Wrap a CLI `main(argv)` so that a UserError prints one line and exits with 2."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            print("interrupted: earlier results are untouched", file=sys.stderr)
            sys.exit(130)

    return wrapper
