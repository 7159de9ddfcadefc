"""One exception type for bad input, so the CLI can turn it into a single line and exit code 2."""


class OnnxotoError(Exception):
    """Bad input or usage: the message is one line that names the file/node and what to do."""
