"""dvc.yaml's code deps, written from the import closure of each stage's command.

    python tools/dvc_deps.py --write   # rewrite every stage's code deps in dvc.yaml
    python tools/dvc_deps.py --check   # exit 1, naming the stages, when dvc.yaml is out of date

A stage runs `python -m stages <name>`; its code deps are exactly the project files that command
imports, transitively (package __init__ files included, imports inside functions too), so a file
that changes reruns exactly the stages that run it. Only the code lines of each `deps:` list are
rewritten, in place: data deps (`data/prepared`, `${data.root}`), comments and everything else in
the file stay as they are. tests/test_dvc_yaml.py runs `--check`.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("stages", "pipeline")  # the order the generated lists follow
DVC_YAML = ROOT / "dvc.yaml"


def module_file(name: str) -> Path | None:
    base = ROOT / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports_of(path: Path) -> set[str]:
    """Project modules imported anywhere in the file (top level or inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # `from pipeline.core import paths`
    return {n for n in names if n.split(".")[0] in PACKAGES}


def closure(roots: list[str]) -> set[Path]:
    """Every project file that importing `roots` imports, the packages on the way included."""
    seen: set[Path] = set()
    todo = list(roots)
    while todo:
        parts = todo.pop().split(".")
        for i in range(1, len(parts) + 1):
            f = module_file(".".join(parts[:i]))
            if f is not None and f not in seen:
                seen.add(f)
                todo += imports_of(f)
    return seen


def command_modules(cmd: str) -> list[str]:
    m = re.fullmatch(r"python -m stages (\w+)", cmd.strip())
    if not m:
        raise SystemExit(f"dvc.yaml: cmd {cmd!r}: expected `python -m stages <name>`")
    return ["stages.__main__", f"stages.{m[1]}"]


def code_deps(cmd: str) -> list[str]:
    """The stage's code deps, stages/ first, each package sorted."""
    rels = [p.relative_to(ROOT).as_posix() for p in closure(command_modules(cmd))]
    return sorted(rels, key=lambda r: (PACKAGES.index(r.split("/")[0]), r))


def _is_code(line: str) -> bool:
    item = line.strip().removeprefix("- ").split("#")[0].strip()
    return line.strip().startswith("- ") and item.split("/")[0] in PACKAGES


def rewrite(text: str) -> str:
    """dvc.yaml with each stage's code deps regenerated (at the place its first code dep stood, else
    after its other deps), nothing else touched."""
    lines, out = text.splitlines(), []
    stage_cmd: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if m := re.match(r"^    cmd: (.+)$", line):
            stage_cmd = m[1]
        if re.match(r"^    deps:\s*$", line) and stage_cmd is not None:
            out.append(line)
            i += 1
            block = []
            while i < len(lines) and lines[i].startswith("      - "):
                block.append(lines[i])
                i += 1
            first = next((k for k, b in enumerate(block) if _is_code(b)), len(block))
            kept = [b for b in block if not _is_code(b)]
            generated = [f"      - {d}" for d in code_deps(stage_cmd)]
            out += kept[:first] + generated + kept[first:]
            continue
        out.append(line)
        i += 1
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="rewrite dvc.yaml's code deps")
    mode.add_argument("--check", action="store_true", help="fail when dvc.yaml's code deps are out of date")
    args = parser.parse_args(argv)
    text = DVC_YAML.read_text()
    new = rewrite(text)
    if args.write:
        if new != text:
            DVC_YAML.write_text(new)
        print(f"{DVC_YAML.name}: {'rewritten' if new != text else 'already up to date'}")
        return 0
    if new != text:
        import difflib

        diff = difflib.unified_diff(text.splitlines(), new.splitlines(), "dvc.yaml", "generated", lineterm="", n=1)
        print("\n".join(diff))
        print("dvc.yaml's code deps are out of date: run `python tools/dvc_deps.py --write`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
