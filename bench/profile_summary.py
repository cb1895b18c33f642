"""Summarises a py-spy raw (collapsed stacks) profile: where the samples went.

`python -m bench --profile DIR` writes one raw profile per measured gateway run (py-spy must be
installed; it is not a dependency). Then `python -m bench.profile_summary DIR/FILE.txt [N]` prints
the share of samples idle in the event loop's selector wait, the busy samples by category (the
split issue 21 asks for: mitmproxy's HTTP layers, hook dispatch, our stream relay, SSE framing,
translation, JSON, h11, logging/inspect, the event loop), by package, and the top N functions by
own and by inclusive samples. `python -m bench.profile_summary DIR` prints one markdown table of
the categories for every profile in DIR (the breakdown bench/README.md shows).

How a sample is attributed: its frames are walked from the innermost outwards and the first frame
whose module belongs to a category decides. Modules in no category (the rest of the standard
library such as dataclasses, copy, contextlib; third-party helpers such as pydantic; mitmproxy's
utils) pass the sample on to their caller, so `dataclasses.fields` called from mitmproxy/hooks.py
counts as hook dispatch and `copy.deepcopy` called from the inspector as inspect copies. C code
(the json and orjson accelerators, socket calls) has no frame of its own: it counts where its
Python caller is. A sample whose innermost frame is the selector's `select` (epoll wait) is idle
and left out of the breakdown, so the categories split busy time only.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
OWN_PACKAGES = ("addons", "translators", "providers", "auth", "core", "cli", "clients")

IDLE = "idle (selector wait)"
OTHER = "other (no frame in a category)"
# (category, module path prefixes), checked in this order for each frame; the first prefix that
# matches wins, so the narrower entries (addons/stream.py, translators/sse.py) come first.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "logging / inspect copies",
        ("logging/", "mitmproxy/log.py", "addons/flow_inspect.py", "addons/kiro_view.py", "addons/prompt_log.py"),
    ),
    (
        "mitmproxy addon/hook dispatch",
        (
            "mitmproxy/addonmanager.py",
            "mitmproxy/hooks.py",
            "mitmproxy/proxy/mode_servers.py",
            "addons/hook_dispatch.py",  # ours, but it is the dispatch
        ),
    ),
    ("mitmproxy HTTP layers", ("mitmproxy/proxy/", "mitmproxy/http.py", "mitmproxy/net/", "mitmproxy/coretypes/")),
    ("our stream relay (addons/stream.py, core/http1.py)", ("addons/stream.py", "core/http1.py")),
    ("SSE framing (translators/sse.py)", ("translators/sse.py",)),
    ("translation (other translators/)", ("translators/",)),
    ("JSON encode/decode", ("json/",)),
    ("h11", ("h11/",)),
    ("asyncio event loop & transports", ("asyncio/", "selectors.py")),
    ("gateway: other code (routing, auth, providers...)", (*(f"{p}/" for p in OWN_PACKAGES), "run.py")),
    ("mitmproxy: other", ("mitmproxy/",)),
)
# Helpers that pass the sample to their caller even though a category prefix would match them.
TRANSPARENT = ("mitmproxy/utils/",)


def _module_path(file: str) -> str:
    """The frame's file relative to its import root: `json/encoder.py`, `mitmproxy/http.py`,
    `addons/stream.py` (py-spy prints most paths that way already; absolute ones are cut here)."""
    for marker in ("site-packages/", "dist-packages/"):
        if marker in file:
            return file.rsplit(marker, 1)[1]
    stdlib = re.search(r"/lib/python3\.\d+/(.*)", file)
    if stdlib:
        return stdlib.group(1)
    if file.startswith("/"):
        for pkg in OWN_PACKAGES:
            if f"/{pkg}/" in file:
                return f"{pkg}/" + file.rsplit(f"/{pkg}/", 1)[1]
    return file


def _package(path: str) -> str:
    top = _module_path(path).split("/", 1)[0].removesuffix(".py")
    return f"gateway:{top}" if top in OWN_PACKAGES else top


def _parse(line: str) -> tuple[list[str], int] | None:
    stack, _, count = line.rstrip("\n").rpartition(" ")
    if not stack or not count.isdigit():
        return None
    return stack.split(";"), int(count)


def _split(frame: str) -> tuple[str, str]:
    """(function, file) of one `func (file:line)` frame; ("", "") when it is not one."""
    m = _FRAME.match(frame)
    return (m.group("func"), m.group("file")) if m else ("", "")


def _name(frame: str) -> tuple[str, str]:
    func, file = _split(frame)
    if not file:
        return frame, ""
    short = file.split("site-packages/", 1)[-1] if "site-packages/" in file else "/".join(file.split("/")[-2:])
    return f"{func} ({short})", file


def frame_category(file: str) -> str | None:
    """The category of a frame's module, or None when the sample passes on to the caller."""
    module = _module_path(file)
    if module.startswith(TRANSPARENT):
        return None
    for category, prefixes in CATEGORIES:
        if module.startswith(prefixes):
            return category
    return None


def categorize(frames: list[str]) -> str:
    """One sample's category, `frames` outermost first (py-spy's order): IDLE when the innermost
    frame is the selector's select, else the innermost frame in a category, else OTHER."""
    func, file = _split(frames[-1]) if frames else ("", "")
    if file and _module_path(file) == "selectors.py" and func.rsplit(".", 1)[-1] == "select":
        return IDLE
    for frame in reversed(frames):
        category = frame_category(_split(frame)[1])
        if category is not None:
            return category
    return OTHER


@dataclass
class Profile:
    """Sample counts of one raw profile."""

    total: int = 0
    categories: Counter[str] = field(default_factory=Counter)
    own: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)
    packages: Counter[str] = field(default_factory=Counter)

    @property
    def busy(self) -> int:
        return self.total - self.categories[IDLE]


def load(text: str) -> Profile:
    """Counts the samples of py-spy's raw format: one line per unique stack, `;`-separated frames
    outermost first, then a space and the sample count."""
    prof = Profile()
    for line in text.splitlines():
        parsed = _parse(line)
        if parsed is None:
            continue
        frames, count = parsed
        # py-spy prefixes thread names ("process 123:..." / "thread (0x..)"); keep only code frames.
        code = [f for f in frames if "(" in f and not f.startswith(("process ", "thread "))]
        if not code:
            continue
        prof.total += count
        prof.categories[categorize(code)] += count
        leaf, leaf_file = _name(code[-1])
        prof.own[leaf] += count
        prof.packages[_package(leaf_file)] += count
        for name in {_name(f)[0] for f in code}:
            prof.inclusive[name] += count
    return prof


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:5.1f}%" if whole else "    -"


def breakdown_lines(prof: Profile) -> list[str]:
    """The idle share, then the busy samples by category (shares of busy samples)."""
    busy = prof.busy
    out = [
        f"idle in the selector's wait: {_pct(prof.categories[IDLE], prof.total).strip()} of all samples "
        f"(left out below)",
        f"busy samples by category ({busy}; each sample counts for the innermost frame in a category, "
        "helpers such as dataclasses/copy/contextlib for their caller):",
    ]
    out += [f"  {_pct(c, busy)}  {name}" for name, c in prof.categories.most_common() if name != IDLE]
    return out


def summarize(path: Path, top: int = 25) -> str:
    prof = load(path.read_text(encoding="utf-8", errors="replace"))
    if not prof.total:
        return f"{path}: no samples"
    out = [f"{path.name}: {prof.total} samples", ""]
    out += breakdown_lines(prof)
    out += ["", "own samples by package (all samples):"]
    out += [f"  {_pct(c, prof.total)}  {p}" for p, c in prof.packages.most_common(15)]
    out += ["", f"top {top} by own samples:"]
    out += [f"  {_pct(c, prof.total)}  {n}" for n, c in prof.own.most_common(top)]
    out += ["", f"top {top} by inclusive samples:"]
    out += [f"  {_pct(c, prof.total)}  {n}" for n, c in prof.inclusive.most_common(top)]
    return "\n".join(out)


def table(paths: list[Path]) -> str:
    """Markdown: one column per profile, one row per category (share of busy samples), idle last."""
    profs = {p.stem: load(p.read_text(encoding="utf-8", errors="replace")) for p in paths}
    names = [c for c, _ in CATEGORIES] + [OTHER]
    out = ["| busy samples by category | " + " | ".join(profs) + " |", "|---" * (len(profs) + 1) + "|"]
    for name in names:
        out.append(f"| {name} | " + " | ".join(_pct(p.categories[name], p.busy).strip() for p in profs.values()) + " |")
    out.append(
        f"| {IDLE}, of all samples | "
        + " | ".join(_pct(p.categories[IDLE], p.total).strip() for p in profs.values())
        + " |"
    )
    out.append("| samples (all) | " + " | ".join(str(p.total) for p in profs.values()) + " |")
    return "\n".join(out)


def main() -> None:
    target = Path(sys.argv[1])
    if target.is_dir():
        print(table(sorted(target.glob("*.txt"))))
        return
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    print(summarize(target, top))


if __name__ == "__main__":
    main()
