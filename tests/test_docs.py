"""The runnable examples in docs/ stay runnable."""

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _python_blocks(name):
    return re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), flags=re.S)


def test_writing_a_pass_example_runs():
    (code,) = _python_blocks("writing-a-pass.md")
    exec(compile(code, "docs/writing-a-pass.md", "exec"), {})
