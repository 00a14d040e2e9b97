"""kit/stack.py reads stack.env, and says which file and line when it cannot."""

from __future__ import annotations

import pytest

from kit import stack


def test_the_repository_stack_file_parses_and_names_the_gpu_targets():
    values = stack.read_stack()
    assert values["ROCM_GPU_ARCHS"].split(";") and values["CUDA_ARCH_LIST"].split(";")
    assert stack.stack_value("ROCM_VERSION") == values["ROCM_VERSION"]


def test_comments_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "stack.env"
    path.write_text("# a comment\n\nA_VERSION=1.2.3\n  # indented comment\nB_LIST=x;y\nEMPTY=\n")
    assert stack.read_stack(path) == {"A_VERSION": "1.2.3", "B_LIST": "x;y", "EMPTY": ""}


@pytest.mark.parametrize("line, expected", [
    ("a_version=1", "expected KEY=value"),
    ("A_VERSION = 1", "expected KEY=value"),
    ('A_VERSION="1 2"', "expected KEY=value"),
])
def test_a_malformed_line_names_file_and_line(tmp_path, line, expected):
    path = tmp_path / "stack.env"
    path.write_text(f"# header\nGOOD=1\n{line}\n")
    with pytest.raises(stack.StackFileError, match=rf"stack\.env:3: {expected}"):
        stack.read_stack(path)


def test_a_key_set_twice_is_an_error(tmp_path):
    path = tmp_path / "stack.env"
    path.write_text("A=1\nA=2\n")
    with pytest.raises(stack.StackFileError, match=r"stack\.env:2: A is set twice"):
        stack.read_stack(path)


def test_a_missing_key_names_file_and_key(tmp_path):
    path = tmp_path / "stack.env"
    path.write_text("A=1\n")
    with pytest.raises(stack.StackFileError, match=r"stack\.env: no B= line"):
        stack.stack_value("B", path)


def test_a_missing_default_stack_file_says_where_it_belongs(tmp_path, monkeypatch):
    """In an image that copied kit/ but not stack.env (/opt/kit/stack.env), the error says what is missing."""
    monkeypatch.setattr(stack, "STACK_FILE", tmp_path / "stack.env")
    with pytest.raises(stack.StackFileError) as err:
        stack.read_stack()
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'stack.env'}: cannot read the stack file: No such file or directory")
    assert "beside the kit/ folder" in message and "/opt/kit" in message
    with pytest.raises(stack.StackFileError, match="No such file"):
        stack.read_stack(tmp_path / "elsewhere.env")
