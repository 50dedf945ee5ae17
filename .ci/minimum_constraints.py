#!/usr/bin/env python
"""pip install with astromix's dependencies pinned to their minimum versions.

Reads ``[project] dependencies`` and every ``[project.optional-dependencies]``
group of pyproject.toml, turns each lower bound ``name>=X.Y`` into the
constraint ``name==X.Y.*`` (the oldest supported release series, with its
bug-fix releases; packages without a lower bound are left free; a package
bounded differently in two groups is an error), prints the constraints and
runs ``python -m pip install -c <constraints> ...`` with this interpreter.
It is ``tox -e test-oldestdeps``'s ``install_command``, so that the bounds
declared in pyproject.toml are the ones tested.

Usage::

    python .ci/minimum_constraints.py pyproject.toml [pip install arguments]
"""

import os
import re
import subprocess
import sys
import tempfile
import tomllib


def minimum_constraints(requirements):
    """``name==X.Y.*`` for every ``name>=X.Y`` requirement (markers and extras not allowed)."""
    out = []
    for req in requirements:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][0-9.]*)\s*", req)
        if match is None:
            if re.search(r"[<>=!~;\[]", req):
                raise SystemExit(f"cannot pin {req!r}: only 'name' or 'name>=X.Y' is supported")
            continue
        name, version = match.groups()
        out.append(f"{name}=={version}.*")
    return out


def project_constraints(project):
    """The constraints of ``[project]``'s dependencies and of all its extras, one per package."""
    groups = {"dependencies": project.get("dependencies", [])}
    groups.update(project.get("optional-dependencies", {}))
    seen = {}
    for group, requirements in groups.items():
        for line in minimum_constraints(requirements):
            name = re.sub(r"[-_.]+", "-", line.split("==")[0]).lower()
            if seen.setdefault(name, (line, group))[0] != line:
                raise SystemExit(f"{name} has two lower bounds: {seen[name][0]} ({seen[name][1]}) "
                                 f"and {line} ({group})")
    return [line for line, _ in seen.values()]


def main(argv):
    if len(argv) < 2:
        raise SystemExit(__doc__)
    with open(argv[1], "rb") as fh:
        lines = project_constraints(tomllib.load(fh)["project"])
    print("minimum constraints: " + ", ".join(lines), flush=True)
    fd, path = tempfile.mkstemp(suffix=".txt", prefix="astromix-oldest-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
        return subprocess.call([sys.executable, "-m", "pip", "install", "-c", path, *argv[2:]])
    finally:
        os.unlink(path)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
