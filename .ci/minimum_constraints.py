#!/usr/bin/env python
"""Write pip constraints pinning astromix's required dependencies to their minimum versions.

Reads ``[project] dependencies`` of pyproject.toml and turns each lower bound
``name>=X.Y`` into ``name==X.Y.*`` (the oldest supported release series, with
its bug-fix releases); dependencies without a lower bound are left free.  Used
by ``tox -e test-oldestdeps``, so that the bounds declared in pyproject.toml are
the ones tested.

Usage::

    python .ci/minimum_constraints.py pyproject.toml constraints.txt
    python .ci/minimum_constraints.py --pip-install pyproject.toml [pip install arguments]

The second form runs ``python -m pip install -c <constraints> ...`` with this
interpreter (tox's ``install_command``).
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


def _read(pyproject):
    with open(pyproject, "rb") as fh:
        return minimum_constraints(tomllib.load(fh)["project"].get("dependencies", []))


def main(argv):
    if len(argv) >= 3 and argv[1] == "--pip-install":
        lines = _read(argv[2])
        print("minimum constraints: " + ", ".join(lines), flush=True)
        fd, path = tempfile.mkstemp(suffix=".txt", prefix="astromix-oldest-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write("\n".join(lines) + "\n")
            return subprocess.call([sys.executable, "-m", "pip", "install", "-c", path,
                                    *argv[3:]])
        finally:
            os.unlink(path)
    if len(argv) != 3:
        raise SystemExit(__doc__)
    lines = _read(argv[1])
    with open(argv[2], "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"{argv[2]}: " + ", ".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
