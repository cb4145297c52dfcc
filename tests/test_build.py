"""The compiled core as built: what the compiler may silently undo.

A prefetch has no effect a test can see, and GCC 12 at -O2 and up deleted every call to a
function whose only work was __builtin_prefetch (its IPA mod-ref analysis takes such a
function for one without effects), so for a while the sparse passes asked for nothing
ahead although their code said so. csrc/fastbp.h's fbp_prefetch keeps them; this test
reads the build's machine code to see that they are there.
"""
import platform
import re
import shutil
import subprocess

import pytest

from fastbp import _core

# The passes that ask for rows ahead: each must reach a prefetch instruction, in its own
# code or in a function it calls (at -O0, the checked build, nothing is inlined).
PREFETCHING = (
    "fbp_sparse_product_f32",          # the rows of W1 the next row names; later CSR rows
    "fbp_sparse_product_f64",
    "_core_read_batch_values",         # later CSR rows (GCC may inline it: INLINED_INTO)
    "_core_catch_up_rows",             # lazy rules: the named rows, ahead of their catch-up
    "_core_row_steps",                 # ... ahead of their step
    "_core_folded_steps",
)
CALL_DEPTH = 4
# A pass called from one place may be inlined there (GCC inlines a static function called
# once when the caller has room): then its caller's own code must hold a prefetch.
INLINED_INTO = {"_core_read_batch_values": "_core_run_batch"}


def disassembly():
    """{function name: (its instructions' text, the names it calls)} of the core's build."""
    text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", _core.__file__],
                          capture_output=True, text=True, check=True).stdout
    functions, name = {}, None
    for line in text.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if header:
            name = header.group(1)
            functions[name] = ([], set())
        elif name is not None and line.strip():
            functions[name][0].append(line)
            call = re.search(r"\bcall\s+[0-9a-f]+ <([^>+]+)", line)
            if call:
                functions[name][1].add(call.group(1))
    return functions


def reaches_a_prefetch(functions, name, depth):
    instructions, calls = functions.get(name, ((), ()))
    if any("prefetch" in line for line in instructions):
        return True
    return depth > 0 and any(reaches_a_prefetch(functions, callee, depth - 1)
                             for callee in calls if callee != name)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                    reason="reads x86-64 machine code")
@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs binutils' objdump")
def test_the_sparse_passes_prefetches_survive_the_compiler():
    functions = disassembly()
    for part in PREFETCHING:
        names, depth = functions_named_like(functions, part), CALL_DEPTH
        if not names and part in INLINED_INTO:
            names, depth = functions_named_like(functions, INLINED_INTO[part]), 0
        assert names, f"no function named like {part} in {_core.__file__}"
        for name in names:
            assert reaches_a_prefetch(functions, name, depth), \
                f"{name} asks for nothing ahead: its prefetches were compiled away"


def functions_named_like(functions, part):
    # (not a target_clones resolver, nor the cold part GCC splits off a function)
    return [name for name in functions
            if part in name and ".resolver" not in name and not name.endswith(".cold")]


def test_a_build_switch_other_than_on_or_off_is_refused(monkeypatch):
    """FASTBP_DEBUG=false (or no, off) made the -O0 checked build: any value but "" or 0
    turned a switch on. Now 0/false/no/off are off, 1/true/yes/on on, anything else is
    refused before anything is built. (setup.py's _switch alone, read from the file: the
    test environment has no Cython, which setup.py imports.)"""
    import ast
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(root, "setup.py")):
        pytest.skip("no setup.py beside the tests (an installed copy)")
    with open(os.path.join(root, "setup.py")) as stream:
        tree = ast.parse(stream.read())
    function = next(node for node in tree.body
                    if isinstance(node, ast.FunctionDef) and node.name == "_switch")
    namespace = {"os": os}
    exec(compile(ast.Module([function], []), "setup.py", "exec"), namespace)
    switch = namespace["_switch"]
    for value, on in (("", False), ("0", False), ("false", False), ("No", False),
                      ("off", False), ("1", True), ("true", True), ("YES", True), ("on", True)):
        monkeypatch.setenv("FASTBP_DEBUG", value)
        assert switch("FASTBP_DEBUG") is on, value
    monkeypatch.delenv("FASTBP_DEBUG")
    assert switch("FASTBP_DEBUG") is False
    monkeypatch.setenv("FASTBP_DEBUG", "maybe")
    with pytest.raises(SystemExit, match="FASTBP_DEBUG='maybe': use 1 \\(on\\) or 0 \\(off\\)"):
        switch("FASTBP_DEBUG")
