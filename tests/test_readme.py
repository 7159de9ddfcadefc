"""The README's code runs as written: its Python blocks execute, and every flag its shell tour
shows exists on the command it is given to (a renamed option must fail here, not on a user).
The "your own loop" block is run by tests/test_attach.py."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from onnxoto import rules
from onnxoto.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), re.S)


def _python_block(containing: str) -> str:
    found = [b for b in _blocks("python") if containing in b]
    assert len(found) == 1, f"README has {len(found)} python blocks with {containing!r}"
    return found[0]


def test_api_block_shrinks_and_saves(zoo_cache, tmp_path, monkeypatch):
    (tmp_path / "model.onnx").write_bytes(zoo_cache("resnet_basic").read_bytes())
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_python_block("onnxoto.partition("), "README api", "exec"), namespace)
    assert namespace["outcome"].passed
    assert namespace["outcome"].changes, "the README's masks remove channels"
    assert (tmp_path / "slim.onnx").stat().st_size < (tmp_path / "model.onnx").stat().st_size


def test_register_rule_block_adds_a_custom_domain_rule(monkeypatch):
    monkeypatch.setattr(rules, "REGISTRY", dict(rules.REGISTRY))
    exec(compile(_python_block("register_rule"), "README register_rule", "exec"), {})
    assert type(rules.REGISTRY[("com.example", "MyScale")]).__name__ == "MyScaleRule"


def _tour_commands() -> list[list[str]]:
    commands = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("onnxoto "):
                commands.append(shlex.split(line.replace("[", "").replace("]", "")))
    return commands


@pytest.mark.parametrize("argv", _tour_commands(), ids=lambda a: " ".join(a[1:3]))
def test_tour_flags_exist(argv):
    words = [w for w in argv[1:] if not w.startswith("-")]
    path = [w for w in words if w in ("partition", "mask", "shrink", "validate", "report",
                                      "train", "dhspg", "woodfisher")]
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    for flag in (w.split("=")[0] for w in argv if w.startswith("--")):
        assert flag in result.output, f"README shows {flag} for 'onnxoto {' '.join(path)}'"


def test_the_tour_covers_every_command():
    shown = {argv[1] for argv in _tour_commands()}
    assert {"partition", "mask", "shrink", "validate", "report", "train"} <= shown
