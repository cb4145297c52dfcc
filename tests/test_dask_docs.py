"""The examples of docs/dask.md run as saved scripts (`python example.py`), as a user runs
them: a LocalCluster's worker processes import the main script, so an example without the
`if __name__ == "__main__":` guard fails this way and not when run through `python -c`."""

import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("distributed")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
with open(os.path.join(ROOT, "docs", "dask.md"), encoding="utf-8") as _handle:
    EXAMPLES = FENCE.findall(_handle.read())


def test_every_example_is_a_whole_guarded_script():
    assert len(EXAMPLES) == 2
    for example in EXAMPLES:
        assert 'if __name__ == "__main__":' in example


@pytest.mark.parametrize("number", range(len(EXAMPLES)))
def test_example_runs_as_a_saved_script(number, tmp_path):
    if "dask_ml" in EXAMPLES[number]:
        pytest.importorskip("dask_ml")
        pytest.importorskip("sklearn")
    script = tmp_path / f"example_{number + 1}.py"
    script.write_text(EXAMPLES[number], encoding="utf-8")
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + "\n" + result.stderr[-6000:]
