"""A newcomer's minutes: the README's two quickstart commands, run as written in a fresh clone of
HEAD (commit first: the working tree's changes are not in it), timed, with `dvc repro`'s minutes
split by stage.

    python benchmarks/newcomer.py              # both commands; the clone is deleted afterwards
    python benchmarks/newcomer.py --keep DIR   # clone into DIR/clone and keep it

Keep the machine quiet while it runs. Every cache starts empty in the work folder, as on a new
machine (pip's and DVC's, XDG_CACHE_HOME, TorchInductor's compiled kernels); the wheels pip installs
come from the machine's package index, as for any user. Each stage's time runs from DVC's "Running
stage" line to the next, so it includes the stage's interpreter start and DVC's hashing and caching
of its outputs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for a Python without the install
from pipeline.core import markdown  # noqa: E402  (standard library only, as on a fresh machine)
from pipeline.core.machine import cpu  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STAGE = re.compile(r"Running stage '([\w-]+)'")


def quickstart() -> tuple[str, str]:
    """The README's two commands: the line after each of the quickstart's `# 1.` and `# 2.` comments."""
    lines = (ROOT / "README.md").read_text().splitlines()
    found = [lines[i + 1] for i, line in enumerate(lines[:-1]) if re.match(r"# [12]\. ", line)]
    if len(found) != 2:
        raise SystemExit("README.md: expected the quickstart's '# 1.' and '# 2.' comments, each above its command")
    return found[0], found[1]


def timed(command: str, cwd: Path) -> tuple[float, list[tuple[float, str]], str]:
    """Seconds, (seconds since start, line) for every line it printed, and its last lines."""
    caches = cwd.parent / "caches"
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(caches / "dvc-site"),
        "XDG_CACHE_HOME": str(caches / "xdg"),
        "TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor"),
    }
    start = time.perf_counter()
    proc = subprocess.Popen(
        ["bash", "-c", command], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    lines = [(time.perf_counter() - start, line.rstrip()) for line in proc.stdout]
    proc.wait()
    if proc.returncode:
        tail = "\n".join(line for _, line in lines[-30:])
        raise SystemExit(f"`{command}` failed with exit status {proc.returncode}:\n{tail}")
    return time.perf_counter() - start, lines, "\n".join(line for _, line in lines[-3:])


def split_by_stage(total: float, lines: list[tuple[float, str]]) -> list[tuple[str, float]]:
    """(part, seconds): what came before the first stage (the install), then every stage."""
    marks = [(t, m.group(1)) for t, line in lines for m in [STAGE.search(line)] if m]
    if not marks:
        return [("before any stage", total)]
    parts = [("install (before the first stage)", marks[0][0])]
    ends = [t for t, _ in marks[1:]] + [total]
    return parts + [(f"stage {name}", end - t) for (t, name), end in zip(marks, ends)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="work in this folder (the clone in DIR/clone) and keep it")
    args = parser.parse_args()
    setup, tests = quickstart()
    work = args.keep or Path(tempfile.mkdtemp(prefix="newcomer-"))
    clone = work / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    try:
        name, flags = cpu()
        print(f"CPU: {name} ({os.cpu_count()} cores; {', '.join(flags)}); commit {head(clone)}\n", flush=True)
        first, lines, _ = timed(setup, clone)
        # command 1's table first: a failing command 2 must not lose it
        columns = [("part", "part", ""), ("seconds", "seconds", ".0f"), ("share", "of command 1", ".0%")]
        print(markdown.head(columns))
        for part, seconds in [*split_by_stage(first, lines), ("**command 1: install + dvc repro**", first)]:
            print(markdown.line({"part": part, "seconds": seconds, "share": seconds / first}, columns), flush=True)
        second, _, summary = timed(tests, clone)
        print(markdown.line({"part": "**command 2: tests**", "seconds": second, "share": "-"}, columns))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\ncommand 1: `{setup}`\ncommand 2: `{tests}`\ntests: {summary.splitlines()[-1] if summary else '?'}")


def head(repo: Path) -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True
    ).stdout.strip()


if __name__ == "__main__":
    main()
