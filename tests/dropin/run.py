"""``tox -e dropin``: requests' and httpx's own test suites, run plain and with the mesh clients
substituted (see dropin_plugin.py); exits non-zero when a test that passes plain fails under the
mesh.

For each library, the sdist of the installed version is downloaded once (``pip download
--no-binary :all: --no-deps``) into the cache directory and extracted without the library's own
source, so the suite tests the installed library. Each run writes a JUnit XML report; the outcomes
are compared per test.

    python tests/dropin/run.py --cache DIR --work DIR [--suite requests] [-- PYTEST ARGS]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUITES = ("requests", "httpx")
#: the suites whose test servers take free ports (so that two runs of one can go side by side)
_FREE_PORTS = frozenset({"requests"})
#: the worse outcome wins when a test appears twice (a teardown error after a pass)
_RANK = {"passed": 0, "skipped": 1, "failed": 2}


@dataclass(frozen=True)
class Comparison:
    """The outcomes of one suite's runs: test id -> passed / failed / skipped."""

    suite: str
    plain: dict[str, str]
    mesh: dict[str, str]
    #: the tests passing plain only, run once more each way (None: not run again)
    again: tuple[dict[str, str], dict[str, str]] | None = None

    @property
    def candidates(self) -> list[str]:
        """Tests that pass plain and do not pass under the mesh (missing counts as not passing)."""
        return sorted(t for t, o in self.plain.items() if o == "passed" and self.mesh.get(t) != "passed")

    @property
    def regressions(self) -> list[str]:
        """The candidates that, run again, again pass plain only (all of them when not run again)."""
        if self.again is None:
            return self.candidates
        plain, mesh = self.again
        return [t for t in self.candidates if plain.get(t) == "passed" and mesh.get(t) != "passed"]

    @property
    def flaky(self) -> list[str]:
        """The candidates that did not repeat: a test of the suite's that fails now and then."""
        return [t for t in self.candidates if t not in self.regressions]

    def counts(self) -> dict[str, int]:
        def n(run: dict[str, str], outcome: str) -> int:
            return sum(1 for o in run.values() if o == outcome)

        return {
            "tests": len(self.plain),
            "passed plain": n(self.plain, "passed"),
            "passed mesh": n(self.mesh, "passed"),
            "failed plain": n(self.plain, "failed"),
            "failed mesh": n(self.mesh, "failed"),
            "skipped plain": n(self.plain, "skipped"),
            "flaky": len(self.flaky),
            "regressions": len(self.regressions),
        }


def outcomes(report: Path) -> dict[str, str]:
    """pytest node id -> passed / failed / skipped, from a JUnit XML report (xunit1: each test's
    file is named)."""
    found: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        file, classname, name = case.get("file", ""), case.get("classname", ""), case.get("name", "")
        module = file.removesuffix(".py").replace("/", ".")
        inner = classname[len(module) + 1 :] if file and classname.startswith(module) else ""
        test = "::".join(part for part in (file or classname, *inner.split("."), name) if part)
        tags = {child.tag for child in case}
        outcome = "failed" if tags & {"failure", "error"} else "skipped" if "skipped" in tags else "passed"
        if _RANK[outcome] >= _RANK.get(found.get(test, "passed"), 0):
            found[test] = outcome
    return found


def sdist(name: str, version: str, cache: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{name}-{version}.tar.gz"
    if not path.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-binary",
                ":all:",
                "--no-deps",
                f"{name}=={version}",
                "-d",
                str(cache),
            ],
            check=True,
        )
    if not path.exists():
        raise SystemExit(f"pip download gave no {path.name} in {cache}")
    return path


def extract(archive: Path, name: str, into: Path) -> Path:
    """The sdist in ``archive``, fresh under ``into``, without the library's own source (its
    ``src/`` or ``<name>/`` folder): the suite imports the installed library."""
    top = archive.name.removesuffix(".tar.gz")
    target = into / top
    shutil.rmtree(target, ignore_errors=True)
    source = (f"{top}/src/", f"{top}/{name}/")
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if not m.name.startswith(source)]
        if hasattr(tarfile, "data_filter"):  # (Python 3.10.12+, 3.11.4+)
            tar.extractall(into, members=members, filter="data")
        else:  # pragma: no cover
            tar.extractall(into, members=members)
    return target


def run_suite(
    suite_dir: Path, report: Path, *, mesh: bool, extra: list[str], targets: tuple[str, ...] = ("tests",)
) -> float:
    """One pytest run of the suite in ``suite_dir``, its outcomes in ``report``; its time."""
    # no proxy of the machine's: the suites set the proxy variables they test (and with urllib's
    # rules, an empty lower-case one would hide the upper-case one a test sets)
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "dropin_plugin"]
    args += ["-p", "no:randomly", f"--junitxml={report}", "-o", "junit_family=xunit1"]
    args += [*targets, *extra]
    if mesh:
        args.append("--mesh-dropin")
    started = time.monotonic()
    done = subprocess.run(
        args, check=False, cwd=suite_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    elapsed = time.monotonic() - started
    lines = done.stdout.strip().splitlines()
    made = [line for line in lines if line.startswith("dropin: mesh clients made")]
    tail = (lines[-1:] or ["(no output)"])[0] + (f"; {made[0].removeprefix('dropin: ')}" if made else "")
    print(f"  {suite_dir.name} {'mesh ' if mesh else 'plain'}: {tail}  ({elapsed:.0f} s)", flush=True)
    if done.returncode not in (0, 1) or not report.exists():
        print(done.stdout[-4000:])
        raise SystemExit(f"the {suite_dir.name} suite did not run (pytest exit {done.returncode})")
    return elapsed


def compare(name: str, cache: Path, work: Path, extra: list[str]) -> Comparison:
    """The installed library's suite, plain then with the mesh clients; the outcomes of both."""
    version = importlib.metadata.version(name)
    suite_dir = extract(sdist(name, version, cache), name, work)
    reports = {kind: work / f"{name}-{kind}.xml" for kind in ("plain", "mesh")}
    for report in reports.values():
        report.unlink(missing_ok=True)
    # requests' suite serves on free ports: its two runs side by side; httpx's serves on a fixed one
    with concurrent.futures.ThreadPoolExecutor(2 if name in _FREE_PORTS else 1) as pool:
        runs = [
            pool.submit(run_suite, suite_dir, report, mesh=kind == "mesh", extra=extra)
            for kind, report in reports.items()
        ]
        for run in runs:
            run.result()
    first = Comparison(f"{name} {version}", outcomes(reports["plain"]), outcomes(reports["mesh"]))
    if not first.candidates:
        return first
    again = []
    for kind in ("plain", "mesh"):  # the candidates once more each way, to tell flakes apart
        report = work / f"{name}-{kind}-again.xml"
        report.unlink(missing_ok=True)
        run_suite(suite_dir, report, mesh=kind == "mesh", extra=extra, targets=tuple(first.candidates))
        again.append(outcomes(report))
    return Comparison(first.suite, first.plain, first.mesh, (again[0], again[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, required=True, help="where the sdists are kept between runs")
    parser.add_argument("--work", type=Path, required=True, help="where the suites are extracted and run")
    parser.add_argument("--suite", choices=SUITES, action="append", help="one suite only (repeatable)")
    parser.add_argument("pytest_args", nargs="*", help="passed on to pytest (after --)")
    opts = parser.parse_args(argv)
    started = time.monotonic()
    # the suites side by side
    with concurrent.futures.ThreadPoolExecutor(len(opts.suite or SUITES)) as pool:
        runs = [pool.submit(compare, name, opts.cache, opts.work, opts.pytest_args) for name in opts.suite or SUITES]
        comparisons = [run.result() for run in runs]
    print(f"\ndrop-in comparison ({time.monotonic() - started:.0f} s in all):")
    for comparison in comparisons:
        counts = ", ".join(f"{k} {v}" for k, v in comparison.counts().items())
        print(f"  {comparison.suite}: {counts}")
        for test in comparison.regressions:
            print(f"    passes plain, not under the mesh: {test} ({comparison.mesh.get(test, 'missing')})")
        for test in comparison.flaky:
            print(f"    flaky (passed plain only once, not again): {test}")
    regressions = sum(len(c.regressions) for c in comparisons)
    print(f"regressions: {regressions}")
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
