"""Run the test suite as if on another CPU: AVX2-only (Zen 3) or a Xeon with AMX.

Why: the suite must pass on every CPU the project meets, but a session gets one host. Every decision cifarbench
makes from the CPU (autoselect's candidates and cache key, the bf16 guard, ``info``, train's precision) reads
``/proc/cpuinfo`` through ``sysinfo.cpu_info``; this script bind-mounts a rewritten copy over it in a private
mount namespace (``unshare -m``), so the tests and every process they start see the other CPU's flags. What it
cannot change: TensorFlow, onnxruntime, XNNPACK and OpenVINO read CPUID themselves and still use the host's
instructions, so this checks the tests' and our code's assumptions, not the runtimes' AVX2 kernels. Capping
oneDNN with ``ONEDNN_MAX_CPU_ISA=AVX2`` was tried and dropped: on an AVX512_BF16 host OpenVINO still picks bf16
from CPUID, then finds no capped kernel for it (compile_model: "Supported primitive descriptors list is empty
for node ... MaxPool2d"; a segfault in inference inside the suite). Needs root (the mount);
``--user nobody`` drops to that user inside the namespace, so "as root and not" runs under either profile.

    python benchmarks/cpus/emulate.py --cpu zen3 -- -q                 # whole suite, AVX2-only flags, as root
    python benchmarks/cpus/emulate.py --cpu amx --user nobody -- -q    # whole suite, AMX Xeon flags, as nobody

The pytest summary, wall time and host land in ``results/<cpu>-<user>.txt``.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# Flags each emulated CPU drops from / adds to the host's list, and the model name it reports.
PROFILES: dict[str, tuple[str, str, frozenset[str]]] = {
    # AMD EPYC 7763 (Zen 3): AVX2 and FMA, no AVX-512 of any kind, no VNNI, no AMX.
    "zen3": ("AMD EPYC 7763 64-Core Processor", "drop", frozenset()),
    # Intel Xeon Platinum 8480+ (Sapphire Rapids): AVX-512 with VNNI and BF16, AVX-VNNI, AMX tiles.
    "amx": ("Intel(R) Xeon(R) Platinum 8480+", "add", frozenset(
        "avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni avx512_bf16 avx512_fp16 avx_vnni "
        "amx_bf16 amx_tile amx_int8".split())),
}
_DROPPED = re.compile(r"^(avx512.*|avx_vnni.*|amx.*)$")


def rewrite_cpuinfo(text: str, cpu: str) -> str:
    """The host's /proc/cpuinfo with the profile's model name and flags on every processor."""
    model, how, extra = PROFILES[cpu]
    out = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        name = key.strip()
        if sep and name == "model name":
            line = f"{key}: {model}"
        elif sep and name == "vendor_id":
            line = f"{key}: {'AuthenticAMD' if cpu == 'zen3' else 'GenuineIntel'}"
        elif sep and name == "flags":
            flags = value.split()
            if how == "drop":
                flags = [f for f in flags if not _DROPPED.match(f)]
            else:
                flags = flags + sorted(extra - set(flags))
            line = f"{key}: {' '.join(flags)}"
        out.append(line)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", choices=sorted(PROFILES), required=True)
    ap.add_argument("--user", default="root", help="run pytest as this user inside the namespace (default root)")
    ap.add_argument("pytest_args", nargs="*", help="after --: pytest's arguments (default -q)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("emulate.py: needs root (it bind-mounts over /proc/cpuinfo in a private mount namespace)", file=sys.stderr)
        return 2
    if not shutil.which("unshare"):
        print("emulate.py: needs util-linux's unshare", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="cpu-emulate-"))
    os.chmod(work, 0o755)
    fake = work / "cpuinfo"
    fake.write_text(rewrite_cpuinfo(Path("/proc/cpuinfo").read_text(), args.cpu))
    os.chmod(fake, 0o644)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    pytest = [sys.executable, "-m", "pytest", *(args.pytest_args or ["-q"])]
    drop: list[str] = []
    if args.user != "root":
        pw = pwd.getpwnam(args.user)
        home = work / "home"
        home.mkdir()
        os.chown(home, pw.pw_uid, pw.pw_gid)
        env.update(HOME=str(home), USER=args.user, LOGNAME=args.user, XDG_CACHE_HOME=str(home / ".cache"))
        drop = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", "--"]
        pytest += ["-p", "no:cacheprovider"]  # the checkout is root's
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()  # what this run tests: taken before it starts
    if subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                      text=True).stdout.strip():
        commit += "-dirty"
    inner = f"mount --bind {fake} /proc/cpuinfo && exec \"$@\""
    cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", inner, "sh", *drop, *pytest]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.monotonic() - t0
    sys.stdout.write(proc.stdout)
    summary = next((ln for ln in reversed(proc.stdout.splitlines()) if re.search(r"\d+ (passed|failed)", ln)), "")
    host = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")), "?")
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / f"{args.cpu}-{args.user}.txt").write_text(
        f"emulated cpu: {args.cpu} ({PROFILES[args.cpu][0]}), user: {args.user}, host: {host}, "
        f"{os.cpu_count()} cpus, commit {commit}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
        f"command: python benchmarks/cpus/emulate.py --cpu {args.cpu} --user {args.user} -- "
        f"{' '.join(args.pytest_args or ['-q'])}\n"
        f"exit {proc.returncode}, wall {wall:.0f} s: {summary.strip()}\n")
    shutil.rmtree(work, ignore_errors=True)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
