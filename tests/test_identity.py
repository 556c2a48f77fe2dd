"""Code digests and argument digests are equal in every process, under any hash seed and on
every installed Python 3.10+.  No database: real child processes under several interpreters."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
CODEHASH = REPO / "durablenb" / "engine" / "_codehash.py"
CANONICAL = REPO / "durablenb" / "engine" / "_canonical.py"
SAMPLES = Path(__file__).resolve().parent / "identity_samples.py"
PYENV_VERSIONS = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"
SEEDS = ("0", "1", "2024", "987654321")

_LOADER = """
import importlib.util, json, sys

def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
"""

CODE_SCRIPT = _LOADER + """
codehash = load("dnb_codehash", sys.argv[1])
samples = load("identity_samples", sys.argv[2])
digests = {name: codehash.function_digest(fn) for name, fn in samples.SAMPLES.items()}
fingerprints = {name: codehash.code_fingerprint(fn) for name, fn in samples.SAMPLES.items()}
print(json.dumps({"seed_probe": hash("durablenb"), "digests": digests, "fingerprints": fingerprints}))
"""

ARGS_SCRIPT = _LOADER + """
import collections, dataclasses, datetime, decimal, enum, uuid
from pathlib import Path, PurePosixPath, PureWindowsPath

canonical = load("dnb_canonical", sys.argv[1])
Point = collections.namedtuple("Point", "tags count")

@dataclasses.dataclass(frozen=True)
class Box:
    items: frozenset
    label: str

class Color(enum.Enum):
    RED = 1

class Tags(frozenset):
    pass

class Holder:
    def __init__(self):
        self.tags = {"alpha", "beta", "gamma", "delta", "epsilon"}
        self.meta = {"k": frozenset({"x", "y", "z"}), 3: "mixed key types"}

words = {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"}
corpus = {
    "flights": (("flights.csv", 3), {}),
    "set_of_str": ((words,), {}),
    "mixed_set": (({"a", 1, (2, "b"), 3.5, None, b"x"},), {}),
    "frozensets": ((frozenset({frozenset({"a", "b"}), frozenset({"c", "d"})}),), {}),
    "nested_dict": (({"b": {1: "x", "a": [1, 2]}, 2: {"y", "z"}, (1, "t"): None,
                      frozenset({"q", "r"}): 1.5},), {"opts": {"s", "t"}}),
    "namedtuple": ((Point({"x", "y", "z"}, 3),), {}),
    "dataclass": ((Box(frozenset({"p", "q", "r"}), "label"),), {}),
    "decimal": ((decimal.Decimal("1.10"),), {}),
    "datetime": ((datetime.datetime(2024, 5, 6, 7, 8, 9, 10, tzinfo=datetime.timezone.utc),
                  datetime.date(2024, 5, 6), datetime.timedelta(days=1, seconds=2)), {}),
    "path": ((Path("/data/flights.csv"), PurePosixPath("a/b"), PureWindowsPath("C:/x")), {}),
    "scalars": ((Color.RED, 1 + 2j, range(1, 10, 2), 10 ** 5000, -0.0, float("inf"), True),
                {"u": uuid.UUID(int=12345)}),
}
if sys.argv[2] == "full":
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    frame = pd.DataFrame({"name": ["a", "b"], "tags": [{"x", "y", "z"}, {"w"}], "n": [1, 2]})
    corpus.update({
        "custom_object": ((Holder(),), {}),
        "numpy": ((np.arange(12.0).reshape(3, 4), np.array([{"s", "t"}, "u"], dtype=object)), {}),
        "dataframe": ((frame,), {}),
        "pyarrow": ((pa.table({"city": ["Paris", "Oslo"], "n": [1, 2]}),), {}),
        "objects_in_plain_data": (([Holder(), np.float64(1.5)], {"h": Holder()}), {}),
        "set_subclass": ((Tags({"m", "n", "o"}),), {}),
    })
digests = {name: canonical.digest(args, kwargs) for name, (args, kwargs) in corpus.items()}
print(json.dumps({"seed_probe": hash("durablenb"), "digests": digests}))
"""


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


codehash = _load("dnb_codehash", CODEHASH)
canonical = _load("dnb_canonical", CANONICAL)


def _interpreters() -> dict[str, str]:
    """This interpreter and every Python 3.10+ installed under pyenv: {label: executable}."""
    found = {f"venv {sys.version.split()[0]}": sys.executable}
    versions = {sys.version_info[:2]}
    for exe in sorted(PYENV_VERSIONS.glob("*/bin/python3")):
        match = re.fullmatch(r"(\d+)\.(\d+)\.\d+", exe.parent.parent.name)
        if match and (int(match[1]), int(match[2])) >= (3, 10) and os.access(exe, os.X_OK):
            found[exe.parent.parent.name] = str(exe)
            versions.add((int(match[1]), int(match[2])))
    assert len(versions) >= 2, f"need at least two Python versions >= 3.10, found {sorted(found)}"
    return found


def _run(exe: str, script: str, args: list[str], seed: str, pythonpath: str | None = None) -> Any:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONHASHSEED"] = seed
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    proc = subprocess.run([exe, "-s", "-c", script, *args], capture_output=True, text=True, env=env,
                          timeout=120, cwd="/")  # fmt: skip
    assert proc.returncode == 0, f"{exe} (PYTHONHASHSEED={seed}) failed:\n{proc.stderr}"
    return json.loads(proc.stdout)


def _assert_all_equal(results: dict[str, Any]) -> None:
    (first_label, first), *rest = results.items()
    for label, result in rest:
        differ = sorted(k for k in first["digests"] if first["digests"][k] != result["digests"].get(k))
        assert not differ, f"{label} differs from {first_label} on {differ}"


# -- code digests -----------------------------------------------------------------------------


def test_code_digests_equal_across_versions_and_seeds() -> None:
    results = {}
    for label, exe in _interpreters().items():
        for seed in SEEDS[1:3]:
            results[f"{label} seed={seed}"] = _run(exe, CODE_SCRIPT, [str(CODEHASH), str(SAMPLES)], seed)
        one, two = (results[f"{label} seed={seed}"] for seed in SEEDS[1:3])
        assert one["seed_probe"] != two["seed_probe"], f"{label}: PYTHONHASHSEED was not applied"
        assert one["fingerprints"] == two["fingerprints"], f"{label}: bytecode fingerprints differ by seed"
    for label, result in results.items():
        missing = sorted(k for k, v in result["digests"].items() if v is None)
        assert not missing, f"{label}: no digest for {missing}"
    _assert_all_equal(results)
    digests = next(iter(results.values()))["digests"]
    assert len(set(digests.values())) == len(digests) - 1  # only method and bound_method coincide


def _digest_of(source: str) -> str | None:
    def f() -> None: ...

    return codehash.function_digest(f, textwrap.dedent(source))


BASE = '''
@retry(times=3)
def load(path, limit=10):
    """Docstring."""
    rows = [line for line in open(path) if "x" in line]
    return {"rows": rows[:limit], 'n': len(rows) + 1}
'''

SAME = [
    # formatting, comments, blank lines
    '''
    @retry(times=3)
    def load(path,
             limit=10):  # comment
        """Docstring."""

        rows = [line for line in open(path)
                if "x" in line]  # another
        return {"rows": rows[:limit],
                'n': len(rows) + 1}
    ''',
    # no docstring, other decorators, another name, other quotes and indentation width
    '''
    @other("decorator")
    @retry(times=4)
    def renamed(path, limit=10):
      rows = [line for line in open(path) if 'x' in line]
      return {'rows': rows[:limit], "n": len(rows) + 1}
    ''',
    # a different docstring, async-free, a trailing comment line
    '''
    def load(path, limit=10):
        """Another docstring
        on two lines."""
        rows = [line for line in open(path) if "x" in line]
        return {"rows": rows[:limit], 'n': len(rows) + 1}
        # the end
    ''',
]

DIFFERENT = [
    BASE.replace("limit=10", "limit=11"),  # constant
    BASE.replace("+ 1", "- 1"),  # operator
    BASE.replace("rows[:limit]", "rows[limit:]"),  # slice
    BASE.replace('"x"', '"y"'),  # string constant
    BASE.replace("open(path)", "open(limit)"),  # name
    BASE.replace("def load", "async def load"),  # async
    BASE.replace("    return", "    if limit:\n        pass\n    return"),  # statement
]


def test_formatting_does_not_count_and_code_does() -> None:
    base = _digest_of(BASE)
    assert base is not None
    for source in SAME:
        assert _digest_of(source) == base, source
    digests = [_digest_of(source) for source in DIFFERENT]
    assert None not in digests and len({base, *digests}) == len(DIFFERENT) + 1


def test_fstrings_sets_and_lambdas() -> None:
    def body(expr: str) -> str | None:
        return _digest_of(f"def f(x):\n    return {expr}\n")

    assert body("f'{x!r:>{10}}'") == body("f'{x!r:>{10}}'  # c") == body("\\\n        f'{x!r:>{10}}'")
    assert body("f'{x:>10}'") != body("f'{x:<10}'")
    assert body("f'{x}' 'a'") == body('f\'{x}\' "a"') != body("f'{x}' 'b'")
    assert body("x in {'a', 'b'}") == body('x in {"a", "b"}') != body("x in {'a', 'c'}")
    double, member = (lambda x: x * 2), (lambda x: x in {"a", "b"})  # noqa: E731
    assert codehash.function_digest(double) == codehash.function_digest(double, "lambda x: x * 2")
    assert codehash.function_digest(member) == codehash.function_digest(member, "lambda x: x in {'a', 'b'}")


def test_cell_digest_ignores_comments() -> None:
    cell = "import math\nx = math.sqrt(2)\n\ndef f(a):\n    '''Doc.'''\n    return a * x\nf(3)\n"
    commented = "# a cell\nimport math  # math\nx = math.sqrt(2)\ndef f(a):\n    return a * x\n\n\nf(3)"
    assert codehash.source_digest(cell) == codehash.source_digest(commented)
    assert codehash.source_digest(cell) != codehash.source_digest(cell.replace("f(3)", "f(4)"))
    assert codehash.source_digest("%ls  \n!echo x") == codehash.source_digest("%ls\n!echo x   ")


def test_code_fingerprint_sees_constants() -> None:
    member = lambda x: x in {"a", "b", "c", "d"}  # noqa: E731
    other = lambda x: x in {"a", "b", "c", "e"}  # noqa: E731
    assert len(codehash.code_fingerprint(member)) == 32
    assert codehash.code_fingerprint(member) != codehash.code_fingerprint(other)


# -- argument digests -------------------------------------------------------------------------


def test_argument_digests_equal_across_seeds() -> None:
    results = {f"seed={seed}": _run(sys.executable, ARGS_SCRIPT, [str(CANONICAL), "full"], seed)
               for seed in SEEDS}  # fmt: skip
    assert len({r["seed_probe"] for r in results.values()}) == len(SEEDS)
    _assert_all_equal(results)
    digests = next(iter(results.values()))["digests"]
    assert len(set(digests.values())) == len(digests)


def test_plain_argument_digests_equal_across_versions(tmp_path: Path) -> None:
    import joblib

    (tmp_path / "joblib").symlink_to(Path(joblib.__file__).parent, target_is_directory=True)
    results = {}
    for i, (label, exe) in enumerate(_interpreters().items()):
        seed = SEEDS[i % len(SEEDS)]
        args = [str(CANONICAL), "plain"]
        results[f"{label} seed={seed}"] = _run(exe, ARGS_SCRIPT, args, seed, pythonpath=str(tmp_path))
    _assert_all_equal(results)


def test_argument_digest_is_by_value() -> None:
    digest = canonical.digest
    assert digest((), {"a": 1, "b": {"x", "y"}}) == digest((), {"b": {"y", "x"}, "a": 1})
    assert digest(({1: "a", "k": [1]},), {}) == digest(({"k": [1], 1: "a"},), {})
    values = [1, 1.0, True, "1", b"1", (1,), [1], {1}, frozenset({1}), None, 0, -1, 2**64]
    assert len({digest((v,), {}) for v in values}) == len(values)
    assert digest(("a", "b"), {}) != digest(("ab",), {})


@pytest.mark.parametrize(
    "make, type_name",
    [
        (lambda: open(__file__), "_io.TextIOWrapper"),
        (threading.Lock, "_thread.lock"),
        (lambda: (x for x in range(3)), "generator"),
        (lambda: (lambda y: y), "function"),
    ],
    ids=["open-file", "lock", "generator", "lambda"],
)
def test_not_canonical(make: Any, type_name: str) -> None:
    bad = make()
    try:
        with pytest.raises(canonical.NotCanonical) as info:
            canonical.digest(("flights.csv", {"cfg": [1, bad]}), {"n": 3})
        assert info.value.path == "args[1]['cfg'][1]"
        assert info.value.type_name == type_name
        assert "args[1]['cfg'][1]" in str(info.value) and type_name in str(info.value)
        with pytest.raises(canonical.NotCanonical, match=re.escape("kwargs['opt']")):
            canonical.digest((), {"opt": bad})
    finally:
        if isinstance(bad, io.IOBase):
            bad.close()


class LockHolder:
    def __init__(self) -> None:
        self.lock = threading.Lock()


def test_not_canonical_inside_objects_and_cycles() -> None:
    with pytest.raises(canonical.NotCanonical, match=r"args\[0\].*holding a _thread.lock"):
        canonical.digest((LockHolder(),), {})
    cycle: list[Any] = [1]
    cycle.append(cycle)
    with pytest.raises(canonical.NotCanonical, match="reference cycle"):
        canonical.digest((cycle,), {})


def test_workflows_defined_in_a_notebook_belong_to_it(monkeypatch):
    import durablenb as dnb
    from durablenb.engine.identity import default_workflow_id
    from durablenb.ipython.cell import default_cell_id

    def analysis(x):
        return x

    in_notebook = dnb.workflow(name="analysis_nb")(analysis)
    in_notebook.fn.__module__ = "__main__"  # as a function defined in a cell is
    from_module = dnb.workflow(name="analysis_mod")(lambda x: x)
    ids = {}
    for path in ("/home/ann/q3.ipynb", "/home/ann/q4.ipynb"):
        monkeypatch.setenv("JPY_SESSION_NAME", path)
        ids[path] = (in_notebook.id_for(1), from_module.id_for(1), default_cell_id("ab" * 32))
    q3, q4 = ids["/home/ann/q3.ipynb"], ids["/home/ann/q4.ipynb"]
    assert q3[0] != q4[0] and q3[2] != q4[2]  # a notebook's workflows and cells are its own
    assert q3[1] == q4[1] == default_workflow_id("analysis_mod", from_module_digest(from_module))
    monkeypatch.setenv("JPY_SESSION_NAME", "/home/ann/q3.ipynb")
    assert in_notebook.id_for(1) == q3[0]  # stable: the same notebook finds its own runs


def from_module_digest(wf):
    from durablenb.engine.identity import args_digest

    return args_digest(wf.name, (1,), {})
