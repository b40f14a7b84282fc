"""The test harness of the code rewards: a completion's last Python block extracted and run in the
sandbox (``rewards.sandbox``) against stdin/stdout cases or assert-style function-call tests, whose
verdict never comes from the program's own process.
"""

from __future__ import annotations

import ast
import builtins as _builtins
import dataclasses
import json
import re
from concurrent.futures import ThreadPoolExecutor

from rewards import sandbox

TEST_TIMEOUT_S = 2.0  # per stdio case, and per phase of a function-call test set
TEST_MEMORY_MB = 256
PYTHON_TAGS = ("", "python", "py", "python3")
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.#-]*)[^\n]*\n(.*?)```", re.DOTALL)


def extract_code(completion: str) -> str | None:
    """The body of the last closed fenced code block tagged as Python (or untagged), else None."""
    blocks = [body for tag, body in _FENCE.findall(completion) if tag.lower() in PYTHON_TAGS]
    return blocks[-1] if blocks else None


def normalize_output(text: str) -> list[str]:
    """Lines with trailing whitespace removed, trailing blank lines dropped."""
    return [line.rstrip() for line in text.rstrip().splitlines()]


def stdio_passes(code: str, case: dict, timeout_s: float = TEST_TIMEOUT_S, memory_mb: int = TEST_MEMORY_MB) -> bool:
    """Run ``code`` on ``case["input"]``; pass when it exits 0 and prints ``case["output"]``
    (compared line by line, ignoring trailing whitespace and trailing blank lines)."""
    res = sandbox.run(code, stdin=str(case["input"]), timeout_s=timeout_s, memory_mb=memory_mb)
    return res.status == "ok" and normalize_output(res.stdout) == normalize_output(str(case["output"]))


# Function-call tests: two phases, so that the verdict never comes from the program's process.
#
# Phase 1 (untrusted) runs the solution, then evaluates only the *calls into the solution* that
# the tests make (`f(3, 4)` in `assert f(3, 4) == 7`), and prints each value encoded as plain
# data (exact builtin types only). The expected values are not in this process. What the harness
# uses after the solution has run (builtins, os.write, a duplicate of fd 1) is bound before it
# runs, so a correct solution that rebinds builtins, patches json, replaces sys.stdout or closes
# fd 1 is still heard; each value goes out on a line of its own, after whatever the solution printed.
# Phase 2 (trusted) runs in a fresh sandbox with no solution code: it decodes the values and
# evaluates each assert with the calls replaced by them. Whatever the program does to itself
# (exits early, redefines assert/print/builtins, returns objects whose __eq__ is always True,
# prints "passed") changes only the values it returns, never the comparison.

_SITE = "\x00rlwhf-site"
_VERDICT = "\x00rlwhf-verdict"
# Builtins whose call around a solution call is evaluated in phase 1 too (e.g. list(gen(3))):
# they only turn the solution's value into plain data, and see no expected value.
_CONVERSIONS = {"list", "tuple", "set", "frozenset", "sorted", "dict"}

_ENCODE = """
def _rlwhf_enc(v, depth=0, type=type, hex=hex, repr=repr, ValueError=ValueError, TypeError=TypeError, bool=bool,
               int=int, float=float, complex=complex, str=str, bytes=bytes, list=list, tuple=tuple, set=set,
               frozenset=frozenset, dict=dict):
    if depth > 100:
        raise ValueError("too deep")
    t = type(v)
    if v is None: return ["none"]
    if t is bool: return ["bool", v]
    if t is int: return ["int", hex(v)]
    if t is float or t is complex: return [t.__name__, repr(v)]
    if t is str: return ["str", v]
    if t is bytes: return ["bytes", v.hex()]
    if t in (list, tuple, set, frozenset): return [t.__name__, [_rlwhf_enc(x, depth + 1) for x in v]]
    if t is dict: return ["dict", [[_rlwhf_enc(k, depth + 1), _rlwhf_enc(x, depth + 1)] for k, x in v.items()]]
    raise TypeError("not plain data: " + t.__name__)
"""

_DECODE = """
def _rlwhf_dec(e):
    tag = e[0]
    if tag == "none": return None
    if tag == "bool": return bool(e[1])
    if tag == "int": return int(e[1], 16)
    if tag == "float": return float(e[1])
    if tag == "complex": return complex(e[1])
    if tag == "str": return str(e[1])
    if tag == "bytes": return bytes.fromhex(e[1])
    if tag == "list": return [_rlwhf_dec(x) for x in e[1]]
    if tag == "tuple": return tuple(_rlwhf_dec(x) for x in e[1])
    if tag == "set": return {_rlwhf_dec(x) for x in e[1]}
    if tag == "frozenset": return frozenset(_rlwhf_dec(x) for x in e[1])
    if tag == "dict": return {_rlwhf_dec(k): _rlwhf_dec(x) for k, x in e[1]}
    raise ValueError("bad tag")
"""


@dataclasses.dataclass
class FunctionTests:
    """Assert-style tests split into setup statements, call sites and rewritten asserts."""

    setup: list[str]
    sites: list[str]  # source of each call into the solution, in order
    asserts: list[tuple[str, list[int]]]  # (rewritten assert source, the sites it uses)


def parse_function_tests(tests: str | list[str]) -> FunctionTests:
    """Split MBPP/HumanEval-like assert statements. Non-assert statements are setup (imports,
    helper values) and must not call the solution. Raises ValueError on an unusable spec."""
    source = tests if isinstance(tests, str) else "\n".join(tests)
    try:
        module = ast.parse(source)
    except SyntaxError as exc:
        raise ValueError(f"function-call tests are not valid Python: {exc}") from exc
    bound = set(dir(_builtins))
    setup, sites, asserts = [], [], []
    for stmt in module.body:
        if not isinstance(stmt, ast.Assert):
            for node in ast.walk(stmt):
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    bound.add(node.id)
                elif isinstance(node, (ast.Import, ast.ImportFrom)):
                    bound.update((a.asname or a.name).split(".")[0] for a in node.names)
                elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                    bound.add(node.name)
            setup.append(ast.unparse(stmt))
            continue
        used: list[int] = []

        class Rewrite(ast.NodeTransformer):
            def visit_Call(self, node):
                inner = node.args[0] if len(node.args) == 1 and not node.keywords else None
                wraps_site = (
                    isinstance(node.func, ast.Name)
                    and node.func.id in _CONVERSIONS
                    and isinstance(inner, ast.Call)
                    and _calls_solution(inner, bound)
                )
                if wraps_site or _calls_solution(node, bound):
                    sites.append(ast.unparse(node))
                    used.append(len(sites) - 1)  # noqa: B023 (the visitor runs inside this iteration)
                    index = ast.Constant(len(sites) - 1)
                    return ast.Subscript(ast.Name("_rlwhf_v", ast.Load()), index, ast.Load())
                return self.generic_visit(node)

        asserts.append((ast.unparse(ast.fix_missing_locations(Rewrite().visit(stmt))), used))
    if not asserts:
        raise ValueError(f"function-call tests need at least one assert statement, got {source[:200]!r}")
    for stmt in setup:
        for node in ast.walk(ast.parse(stmt)):
            if isinstance(node, ast.Call) and _calls_solution(node, bound):
                raise ValueError(f"setup statement {stmt!r} calls the solution; only asserts may")
    return FunctionTests(setup, sites, asserts)


def _calls_solution(node: ast.Call, bound: set[str]) -> bool:
    return isinstance(node.func, ast.Name) and node.func.id not in bound


def _phase1_program(solution: str, spec: FunctionTests) -> str:
    return "\n".join(
        [
            "import os as _rlwhf_os",
            _ENCODE,
            "def _rlwhf_phase1(solution, setup, sites, enc=_rlwhf_enc, exec=exec, eval=eval, compile=compile, repr=repr,",
            "                  enumerate=enumerate, BaseException=BaseException, write=_rlwhf_os.write, fd=_rlwhf_os.dup(1)):",
            "    g = {'__name__': 'solution', '__builtins__': __builtins__}",
            "    exec(compile(solution, 'solution.py', 'exec'), g)",
            "    for s in setup:",
            "        exec(s, g)",
            "    for i, site in enumerate(sites):",
            "        try:",
            f"            data = ('\\n' + {_SITE!r} + ' %d %s\\n' % (i, repr(enc(eval(site, g))))).encode('utf-8', 'surrogatepass')",
            "            while data:",
            "                data = data[write(fd, data):]",
            "        except BaseException:",
            "            continue",
            f"_rlwhf_phase1({solution!r}, {spec.setup!r}, {spec.sites!r})",
        ]
    )


def _site_value(text: str):
    """A value phase 1 printed (a Python literal of lists, strings and booleans), or None."""
    try:
        value = ast.literal_eval(text)
        json.dumps(value)  # it goes on to phase 2 as JSON
    except Exception:  # anything a program printed: malformed, too deep, too big
        return None
    return value


def _phase2_program(spec: FunctionTests) -> str:
    return "\n".join(
        [
            "import json, sys",
            _DECODE,
            "_rlwhf_v = {}",
            "for k, e in json.loads(sys.stdin.read()).items():",
            "    try:",
            "        _rlwhf_v[int(k)] = _rlwhf_dec(e)",
            "    except Exception:",
            "        pass",
            "g = {'_rlwhf_v': _rlwhf_v, '__name__': 'tests'}",
            f"for s in {spec.setup!r}:",
            "    exec(s, g)",
            "verdicts = []",
            f"for src, used in {spec.asserts!r}:",
            "    ok = all(k in _rlwhf_v for k in used)",
            "    if ok:",
            "        try:",
            "            exec(src, g)",
            "        except BaseException:",
            "            ok = False",
            "    verdicts.append(ok)",
            f"print({_VERDICT!r}, json.dumps(verdicts))",
        ]
    )


def function_tests_passed(
    code: str, tests: str | list[str], timeout_s: float = TEST_TIMEOUT_S, memory_mb: int = TEST_MEMORY_MB
) -> list[bool]:
    """Run assert-style tests against ``code``; one verdict per assert, decided outside the
    program's process (see the two phases above)."""
    spec = parse_function_tests(tests)
    values: dict[str, object] = {}
    if spec.sites:
        first = sandbox.run(_phase1_program(code, spec), timeout_s=timeout_s, memory_mb=memory_mb)
        for line in first.stdout.split("\n"):
            if line.startswith(_SITE + " "):
                parts = line.split(" ", 2)
                if len(parts) == 3 and parts[1].isdigit():
                    value = _site_value(parts[2])
                    if value is not None:
                        values[parts[1]] = value
    second = sandbox.run(_phase2_program(spec), stdin=json.dumps(values), timeout_s=timeout_s, memory_mb=memory_mb)
    for line in second.stdout.splitlines():
        if line.startswith(_VERDICT + " "):
            verdicts = json.loads(line.split(" ", 1)[1])
            if isinstance(verdicts, list) and len(verdicts) == len(spec.asserts):
                return [v is True for v in verdicts]
    return [False] * len(spec.asserts)


def _as_test_spec(tests):
    """Accept a JSON string for either format, as datasets often store tests as text."""
    if isinstance(tests, str):
        stripped = tests.lstrip()
        if stripped.startswith(("[", "{")):
            try:
                return json.loads(tests)
            except ValueError:
                pass
    return tests


def score_code(
    completion: str,
    tests,
    timeout_s: float = TEST_TIMEOUT_S,
    memory_mb: int = TEST_MEMORY_MB,
    executor: ThreadPoolExecutor | None = None,
) -> float | None:
    """Fraction of ``tests`` that the last code block of ``completion`` passes (None: no tests).

    ``tests`` is either a list of ``{"input": str, "output": str}`` (stdin/stdout cases, one
    sandboxed run each), or assert statements as one string or a list of strings (function-call
    tests, MBPP ``test_list`` style), or either of these as a JSON string.
    """
    tests = _as_test_spec(tests)
    if tests is None or (hasattr(tests, "__len__") and len(tests) == 0):
        return None
    code = extract_code(completion)
    if code is None:
        return 0.0
    if isinstance(tests, dict) and "inputs" in tests and "outputs" in tests:  # APPS/TACO layout
        tests = [{"input": i, "output": o} for i, o in zip(tests["inputs"], tests["outputs"])]
    if isinstance(tests, list) and all(isinstance(t, dict) for t in tests):
        for t in tests:
            if "input" not in t or "output" not in t:
                raise ValueError(f"a stdio test case needs 'input' and 'output' keys, got {sorted(t)}")
        mapper = executor.map if executor is not None else map
        passed = list(mapper(lambda case: stdio_passes(code, case, timeout_s, memory_mb), tests))
    elif isinstance(tests, (str, list)):
        passed = function_tests_passed(code, tests, timeout_s, memory_mb)
    else:
        raise ValueError(
            f"tests must be a list of {{'input', 'output'}} dicts or assert statements (str or list of str), "
            f"got {type(tests).__name__}"
        )
    return sum(passed) / len(passed)
