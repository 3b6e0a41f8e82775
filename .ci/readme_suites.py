"""Run the README's user test files, each in a fresh venv holding only trio-echo and its framework.

The files are the fenced ``python`` blocks of README.md preceded by a marker
comment ``<!-- readme-suite: STYLE -->``; they are taken from the README itself,
so what users copy is what runs.  For each style and each pytest major (8 and
9), a new virtual environment gets trio-echo (one wheel, built once from the
checkout, with its ``pytest`` extra), that pytest and the style's framework,
from a wheelhouse filled once (so each environment installs offline, in
seconds).  Every file must pass, with the expected number of tests; then a
copy with every ``assert`` negated must fail every one of them.  The
``serve_in_thread`` script runs with plain ``python`` in an environment holding
only trio-echo.

Usage: python .ci/readme_suites.py [WORK_DIR]   (default: a temporary directory)
Exit status 0 if every run did what it should; 1 otherwise, saying which.
"""

from __future__ import annotations

import ast
import concurrent.futures
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SUITE = re.compile(r"<!-- readme-suite: (\w+) -->\n```python\n(.*?)```", re.DOTALL)

# The pytest releases CI has seen pass, one per supported major.
PYTESTS = ("pytest==8.4.2", "pytest==9.2.0")
# Each framework at the release CI has seen pass.
ASYNCIO = "pytest-asyncio==1.5.0"
ANYIO = "anyio==4.16.0"
PYTEST_TRIO = "pytest-trio==0.8.0"

TRIO_MARKER = re.compile(r"^# Not needed if .*\n^pytestmark = pytest\.mark\.trio\n", re.MULTILINE)
# Every run fails on any warning; pytest-asyncio warns when this is unset.
ASYNCIO_INI = "asyncio_default_fixture_loop_scope = function\n"
# A run that takes longer than this has hung.
RUN_TIMEOUT = 120


@dataclass(frozen=True)
class Run:
    """One way to run one README file: its framework, pytest ini lines, expected test count."""

    style: str
    name: str
    packages: tuple[str, ...]
    tests: int
    ini: str = ""
    #: Drop the pytest-trio marker lines (the file then relies on trio_mode).
    drop_trio_marker: bool = False


RUNS = (
    Run("sync", "sync", (), tests=4),
    Run("unittest", "unittest", (), tests=2),
    Run("asyncio", "asyncio-strict", (ASYNCIO,), 2, ASYNCIO_INI + "asyncio_mode = strict\n"),
    Run("asyncio", "asyncio-auto", (ASYNCIO,), 2, ASYNCIO_INI + "asyncio_mode = auto\n"),
    Run("anyio", "anyio", (ANYIO,), tests=4),
    Run("trio", "trio-marker", (PYTEST_TRIO,), tests=2),
    Run("trio", "trio-mode", (PYTEST_TRIO,), 2, "trio_mode = true\n", drop_trio_marker=True),
)


# One line of the report: passed or not, what was checked, the output to show if not.
Check = tuple[bool, str, str]


def readme_files() -> dict[str, str]:
    return dict(SUITE.findall(README.read_text()))


def negate_asserts(code: str) -> str:
    """*code* with every ``assert X`` turned into ``assert not (X)``."""

    class Negate(ast.NodeTransformer):
        def visit_Assert(self, node: ast.Assert) -> ast.Assert:
            node.test = ast.UnaryOp(op=ast.Not(), operand=node.test)
            return node

    tree = Negate().visit(ast.parse(code))
    return ast.unparse(ast.fix_missing_locations(tree))


def sh(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT * 5,
        check=False,
    )


def must(result: subprocess.CompletedProcess[str]) -> None:
    if result.returncode != 0:
        sys.exit(f"{' '.join(result.args)} failed:\n{result.stdout}\n{result.stderr}")


def new_venv(where: Path, wheelhouse: Path, *requirements: str) -> Path:
    """A fresh venv at *where* with *requirements* installed offline; its python."""
    must(sh(sys.executable, "-m", "venv", "--without-pip", where))
    python = where / "bin" / "python"
    must(
        sh(
            sys.executable, "-m", "pip", "--python", python, "install", "--quiet",
            "--no-index", "--find-links", wheelhouse, *requirements,
        )
    )  # fmt: skip
    return python


def outcome(output: str) -> dict[str, int]:
    """pytest's closing counts ("2 passed, 1 failed") as a dict."""
    last = output.strip().splitlines()[-1] if output.strip() else ""
    return {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", last)}


def run_pytest(python: Path, where: Path, run: Run, code: str) -> tuple[int, str]:
    where.mkdir()
    (where / "pytest.ini").write_text("[pytest]\n" + run.ini)
    (where / f"test_{run.style}.py").write_text(code)
    result = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def run_job(
    work: Path, wheelhouse: Path, wheel: Path, pytest: str, runs: tuple[Run, ...]
) -> list[Check]:
    """Each of *runs* on *pytest*, in one fresh venv: as written, then negated."""
    checks: list[Check] = []
    where = work / f"{runs[0].style}-{pytest}"
    python = new_venv(where / "venv", wheelhouse, f"{wheel}[pytest]", pytest, *runs[0].packages)
    for run in runs:
        label = f"{run.name} on {pytest}"
        code = readme_files()[run.style]
        if run.drop_trio_marker:
            code, dropped = TRIO_MARKER.subn("", code)
            assert dropped == 1, "the trio file lost its pytestmark line"
        status, output = run_pytest(python, where / f"{run.name}-as-is", run, code)
        passed = status == 0 and outcome(output) == {"passed": run.tests}
        checks.append((passed, f"{label}: {run.tests} passed", output))
        status, output = run_pytest(
            python, where / f"{run.name}-negated", run, negate_asserts(code)
        )
        failed = status == 1 and outcome(output) == {"failed": run.tests}
        checks.append(
            (failed, f"{label}: with its assertions negated, all {run.tests} fail", output)
        )
    return checks


def run_thread_script(work: Path, wheelhouse: Path, wheel: Path, code: str) -> list[Check]:
    """The serve_in_thread script with plain python, in a venv holding only trio-echo."""
    python = new_venv(work / "thread-venv", wheelhouse, str(wheel))
    script = work / "check_echo.py"
    script.write_text(code)
    result = sh(python, script)
    passed = result.returncode == 0 and result.stdout.startswith("ok: ")
    checks = [(passed, "check_echo.py passes", result.stdout + result.stderr)]
    script.write_text(negate_asserts(code))
    result = sh(python, script)
    failed = result.returncode == 1 and "AssertionError" in result.stderr
    checks.append((failed, "check_echo.py with assertions negated fails", result.stderr))
    return checks


def main(work: Path) -> int:
    started = time.monotonic()
    files = readme_files()
    missing = {run.style for run in RUNS} - set(files) | ({"thread"} - set(files))
    if missing:
        sys.exit(f"README.md has no readme-suite block for: {', '.join(sorted(missing))}")

    print("== building trio-echo's wheel and the wheelhouse", flush=True)
    dist, wheelhouse = work / "dist", work / "wheels"
    must(sh(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", ROOT, "-w", dist))
    (wheel,) = dist.glob("trio_echo-*.whl")
    frameworks = (ASYNCIO, ANYIO, PYTEST_TRIO)
    for pytest in PYTESTS:
        must(sh(sys.executable, "-m", "pip", "wheel", "--quiet", "-w", wheelhouse,
                f"{wheel}[pytest]", pytest, *frameworks))  # fmt: skip
    print(f"   {time.monotonic() - started:.1f} s", flush=True)

    # One job per fresh venv (runs needing the same packages share one); two at a time,
    # for the two cores.
    jobs: list[tuple[str, tuple[Run, ...]]] = []
    for pytest in PYTESTS:
        for packages in dict.fromkeys(run.packages for run in RUNS):
            jobs.append((pytest, tuple(run for run in RUNS if run.packages == packages)))
    checks: list[Check] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(run_job, work, wheelhouse, wheel, *job) for job in jobs]
        futures.append(pool.submit(run_thread_script, work, wheelhouse, wheel, files["thread"]))
        for future in futures:
            for ok, what, output in future.result():
                print(f"   {'ok  ' if ok else 'FAIL'} {what}", flush=True)
                if not ok:
                    print(output[-4000:], flush=True)
                checks.append((ok, what, output))
    failures = [what for ok, what, _ in checks if not ok]

    elapsed = time.monotonic() - started
    if failures:
        print(f"README suites: {len(failures)} failed ({elapsed:.0f} s):")
        for failure in failures:
            print(f"  - {failure}")
        return 1
    print(f"README suites: all passed ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1:
        sys.exit(main(Path(sys.argv[1]).resolve()))
    with tempfile.TemporaryDirectory(prefix="readme-suites-") as tmp:
        sys.exit(main(Path(tmp)))
