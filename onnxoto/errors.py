"""One exception type for bad input, so the CLI can turn it into a single line and exit code 2."""


class OnnxotoError(Exception):
    """Bad input or usage: the message is one line that names the file/node and what to do."""


class MismatchError(OnnxotoError):
    """A model does not compute what it should (slim vs. reference beyond tolerance): not bad
    input but a failed check, so the CLIs exit 1 instead of 2."""


def one_line(exc: BaseException | str) -> str:
    """A library's message on one line: its lines joined, not cut at the first break (onnx's
    checker and onnxruntime put the useful part after it)."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if not text and isinstance(exc, BaseException):
        return type(exc).__name__
    return text
