"""`python -m bench` (or `make bench`): the gateway's own cost, side by side with mitmproxy's floor.

One run starts a fake upstream, a load generator, a bare `mitmdump` reverse proxy and the gateway
(`mitmdump -s run.py`), all on loopback, and measures against the same fake: direct, through the
bare proxy, and through the gateway (same-dialect passthrough and cross-dialect translation for
every registered provider). The proxy under test is pinned to one core, the fake and the load
generator to the other. Prints a markdown report and writes it to bench/results/latest.md.
See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import payloads, report
from bench.oauth_files import gemini_creds, kiro_creds
from bench.procs import REPO, Launcher, LoadClient, cpu_count, idlest_first
from bench.scenarios import Durations, Runner, Target

RESULTS = Path(__file__).resolve().parent / "results" / "latest.md"


def _provider_configs(fake_port: int, creds_dir: Path, registered: set[str]) -> dict:
    base = f"http://127.0.0.1:{fake_port}"
    providers: dict = {
        "openai-custom": {"base_url": f"{base}/v1", "accounts": [{"label": "bench", "api_key": "sk-upstream-bench"}]},
        "claude-custom": {"base_url": base, "accounts": [{"label": "bench", "api_key": "sk-ant-upstream-bench"}]},
    }
    if "gemini-cli-oauth" in registered:
        providers["gemini-cli-oauth"] = {
            "base_url": f"{base}/v1internal",
            "token_url": f"{base}/token",
            "accounts": [
                {"label": "bench", "credentials": str(gemini_creds(creds_dir / "gemini")), "project_id": "bench-proj"}
            ],
        }
    if "claude-kiro-oauth" in registered:
        providers["claude-kiro-oauth"] = {
            "base_url": base,
            "refresh_url": f"{base}/refreshToken",
            "refresh_idc_url": f"{base}/token",
            "accounts": [{"label": "bench", "credentials": str(kiro_creds(creds_dir / "kiro"))}],
        }
    return {
        "api_keys": [payloads.CLIENT_KEY],
        "default_provider": "openai-custom",
        "providers": providers,
    }


def _registered_adapters(repo: Path) -> set[str]:
    sys.path.insert(0, str(repo))
    try:
        from providers import ADAPTERS

        return set(ADAPTERS)
    finally:
        sys.path.pop(0)


# (name, client dialect, provider id, upstream dialect the fake speaks)
GATEWAY_ROUTES = (
    ("gw openai→openai (passthrough)", "openai_chat", "openai-custom"),
    ("gw openai→claude", "openai_chat", "claude-custom"),
    ("gw claude→openai", "claude", "openai-custom"),
    ("gw claude→gemini-cli", "claude", "gemini-cli-oauth"),
    ("gw claude→kiro", "claude", "claude-kiro-oauth"),
)


def _machine() -> dict[str, str]:
    import mitmproxy.version

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        load = []
    return {
        "cores": f"{cpu_count()} ({model})" if model else str(cpu_count()),
        "python": platform.python_version(),
        "mitmproxy": mitmproxy.version.VERSION,
        "platform": platform.platform(),
        "load average at start": " ".join(load),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="shorter runs (about half the time); noisier numbers")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--scale", action="store_true", help="run the HAProxy 1-vs-2 process run (installs haproxy)")
    scale.add_argument("--no-scale", action="store_true", help="skip the HAProxy run even if haproxy is installed")
    p.add_argument("--repo", type=Path, default=REPO, help="checkout whose run.py is benched (default: this one)")
    p.add_argument("--targets", default="", help="comma-separated substrings: only targets whose name has one")
    p.add_argument("--out", type=Path, default=RESULTS, help="where the markdown report goes")
    p.add_argument("--profile", type=Path, default=None, help="py-spy raw profiles of the gateway go here")
    p.add_argument("--skip-memory", action="store_true", help="skip the 1,000-streams and repeated-runs memory part")
    return p.parse_args(argv)


def _want(name: str, only: str) -> bool:
    return not only or any(s.strip() and s.strip() in name for s in only.split(","))


def _ensure_haproxy(explicit: bool) -> str | None:
    """None when haproxy can run; else why the scale run is skipped."""
    if shutil.which("haproxy"):
        return None
    if not explicit:
        return "haproxy is not installed (pass --scale to install it with apt-get, or apt-get install haproxy)"
    import subprocess

    print("installing haproxy with apt-get (--scale) ...", flush=True)
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=300, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "haproxy"], check=True, timeout=300, capture_output=True)
    except (OSError, subprocess.SubprocessError) as e:
        return f"haproxy could not be installed: {e}"
    return None if shutil.which("haproxy") else "haproxy could not be installed"


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    started = time.monotonic()
    durations = Durations.quick() if args.quick else Durations.full()
    cores = idlest_first(sorted(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else []
    proxy_cpus = {cores[0]} if len(cores) >= 2 else None
    load_cpus = set(cores[1:]) if len(cores) >= 2 else None
    machine = _machine()
    machine["pinning"] = (
        f"proxy under test on CPU {sorted(proxy_cpus)}, fake + load generator on CPU {sorted(load_cpus)}"
        if proxy_cpus
        else "none (fewer than 2 usable cores)"
    )
    machine["durations"] = durations.describe()
    registered = _registered_adapters(args.repo)
    print(f"bench: {machine['cores']} cores, Python {machine['python']}, mitmproxy {machine['mitmproxy']}", flush=True)
    print(f"bench: {machine['durations']}", flush=True)

    with tempfile.TemporaryDirectory(prefix="aiclient-bench-") as tmp:
        workdir = Path(tmp)
        launcher = Launcher(workdir)
        load = LoadClient(workdir, load_cpus)
        try:
            fake = launcher.fake(load_cpus)
            floor = launcher.mitmdump_floor(fake.port, proxy_cpus)
            floor_streaming = launcher.mitmdump_floor(fake.port, proxy_cpus, streaming=True)
            config = _provider_configs(fake.port, workdir / "creds", registered)
            gateway = launcher.gateway("gateway", config, proxy_cpus, repo=args.repo)
            runner = Runner(load, durations, profile_dir=args.profile)
            targets = [
                Target("direct (no proxy)", fake.port, "openai_chat", None, None),
                Target(
                    "mitmdump floor (no addon)",
                    floor.port,
                    "openai_chat",
                    None,
                    floor,
                    stream_port=floor_streaming.port,
                    stream_proc=floor_streaming,
                ),
            ]
            skipped: list[str] = []
            for name, client, provider in GATEWAY_ROUTES:
                if provider not in registered:
                    skipped.append(f"{name}: provider {provider} is not registered in providers.ADAPTERS yet")
                    continue
                targets.append(Target(name, gateway.port, client, provider, gateway))
            targets = [t for t in targets if _want(t.name, args.targets)]
            watched = (gateway, floor, floor_streaming)
            rss_start = {p.name: p.rss() for p in watched}

            for pass_no in range(1, durations.passes + 1):
                for t in targets:
                    print(f"bench: pass {pass_no}/{durations.passes}: {t.name} ...", flush=True)
                    runner.json_runs(t)
                    runner.stream_runs(t)
            rss_after = {p.name: p.rss() for p in watched}

            memory = None
            if not args.skip_memory:
                print("bench: 1,000 concurrent slow streams ...", flush=True)
                translated = next((t for t in targets if t.provider == "claude-custom"), None)
                floor_t = next((t for t in targets if t.proc is floor), None)
                memory = runner.memory(floor_t, translated, rss_start=rss_start, rss_after=rss_after)
            scale = None
            why_no_scale = "skipped (--no-scale)" if args.no_scale else _ensure_haproxy(args.scale)
            if why_no_scale is None:
                print("bench: HAProxy in front of 1 and 2 gateway processes ...", flush=True)
                launcher.stop(floor)
                launcher.stop(floor_streaming)
                launcher.stop(gateway)
                try:
                    scale = runner.scale(launcher, config, args.repo)
                except RuntimeError as e:  # a load balancer that would not start must not cost the report
                    why_no_scale = f"the scale run failed: {str(e)[-500:]}"
                    print(f"bench: {why_no_scale}", flush=True)
            else:
                print(f"bench: scale run skipped: {why_no_scale}", flush=True)
        finally:
            load.stop()
            launcher.close()
        machine["total bench time"] = f"{time.monotonic() - started:.0f} s"
        machine["load average at end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        text = report.render(machine, runner.results, memory, scale, why_no_scale, skipped)
    print()
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"bench: wrote {args.out}", flush=True)
    print("bench: issue 21's goals:", flush=True)
    for line in report.verdicts(runner.results, memory):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
