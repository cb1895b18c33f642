"""Summarises a py-spy raw (collapsed stacks) profile: where the samples went.

`python -m bench --profile DIR` writes one raw profile per measured gateway run (py-spy must be
installed; it is not a dependency). Then `python -m bench.profile_summary DIR/FILE.txt [N]` prints
the top N functions by own samples and by inclusive samples, and the share of samples by package
(mitmproxy, h11, httpx/httpcore, asyncio, the gateway's own packages).
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
OWN_PACKAGES = ("addons", "translators", "providers", "auth", "core")


def _package(path: str) -> str:
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if "/lib/python3" in path:
        rest = path.split("/lib/python3", 1)[1].split("/", 2)
        return "stdlib:" + (rest[1].removesuffix(".py") if len(rest) > 1 else "?")
    for pkg in OWN_PACKAGES:
        if f"/{pkg}/" in path:
            return f"gateway:{pkg}"
    return path.rsplit("/", 1)[-1]


def _parse(line: str) -> tuple[list[str], int] | None:
    stack, _, count = line.rstrip("\n").rpartition(" ")
    if not stack or not count.isdigit():
        return None
    return stack.split(";"), int(count)


def _name(frame: str) -> tuple[str, str]:
    m = _FRAME.match(frame)
    if not m:
        return frame, ""
    file = m.group("file")
    short = file.split("site-packages/", 1)[-1] if "site-packages/" in file else "/".join(file.split("/")[-2:])
    return f"{m.group('func')} ({short})", file


def summarize(path: Path, top: int = 25) -> str:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parsed = _parse(line)
        if parsed is None:
            continue
        frames, count = parsed
        # py-spy prefixes thread names ("process 123:..." / "thread (0x..)"); keep only code frames.
        code = [f for f in frames if "(" in f and not f.startswith(("process ", "thread "))]
        if not code:
            continue
        total += count
        leaf, leaf_file = _name(code[-1])
        own[leaf] += count
        packages[_package(leaf_file)] += count
        for name in {_name(f)[0] for f in code}:
            inclusive[name] += count
    if not total:
        return f"{path}: no samples"
    out = [f"{path.name}: {total} samples", "", "own samples by package:"]
    out += [f"  {100 * c / total:5.1f}%  {p}" for p, c in packages.most_common(15)]
    out += ["", f"top {top} by own samples:"]
    out += [f"  {100 * c / total:5.1f}%  {n}" for n, c in own.most_common(top)]
    out += ["", f"top {top} by inclusive samples:"]
    out += [f"  {100 * c / total:5.1f}%  {n}" for n, c in inclusive.most_common(top)]
    return "\n".join(out)


def main() -> None:
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    print(summarize(Path(sys.argv[1]), top))


if __name__ == "__main__":
    main()
