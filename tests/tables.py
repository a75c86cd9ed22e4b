"""Reading the CSV tables the commands write, for assertions."""
import csv


def read_csv_rows(path):
    """The rows of a CSV file with a header line, as dicts keyed by column name."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))
