"""Every ```python block in the documentation runs.

The blocks of one file run in order, in one namespace (later blocks use what earlier ones
defined), in a fresh Python process whose working directory is a temporary folder (the
examples write files such as model.fbp, and the Ctrl-C example sends itself SIGINT).
"""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = ["README.md", os.path.join("docs", "trainer.md"), "docs/dask.md", "docs/sklearn.md"]
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)

RUNNER = r"""
import re, sys, traceback
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
path = sys.argv[1]
text = open(path, encoding="utf-8").read()
namespace = {"__name__": "__main__"}
for number, match in enumerate(FENCE.finditer(text), 1):
    line = text[:match.start()].count("\n") + 2
    code = compile(match.group(1), f"{path}, block {number} (line {line})", "exec")
    try:
        exec(code, namespace)
    except BaseException:
        traceback.print_exc()
        print(f"FAILED: {path}, python block {number}, starting at line {line}", file=sys.stderr)
        sys.exit(1)
    print(f"--- block {number} ok", flush=True)
"""


def python_blocks(path):
    with open(path, encoding="utf-8") as handle:
        return FENCE.findall(handle.read())


@pytest.mark.parametrize("document", DOCUMENTS)
def test_documentation_examples_run(document, tmp_path):
    path = os.path.join(ROOT, document)
    blocks = python_blocks(path)
    assert blocks, f"{document} has no python blocks"
    for block in blocks:
        compile(block, document, "exec")                 # a syntax error names the file
    env = dict(os.environ)
    result = subprocess.run([sys.executable, "-c", RUNNER, path], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout[-3000:] + "\n" + result.stderr[-6000:])
    assert result.stdout.count("--- block") == len(blocks)


def test_every_python_fence_is_closed():
    """An unclosed or misspelled fence would silently drop examples from the test above."""
    for document in DOCUMENTS:
        with open(os.path.join(ROOT, document), encoding="utf-8") as handle:
            text = handle.read()
        opened = len(re.findall(r"^```python", text, re.MULTILINE))
        assert opened == len(python_blocks(os.path.join(ROOT, document))), document
        assert text.count("\n```") % 2 == 0, f"{document}: unbalanced ``` fences"
