"""`cifarbench info`: what this machine and install can do."""

from __future__ import annotations

import json

import click

from cifarbench.backends import BACKENDS, unavailable_reason
from cifarbench.errors import CifarbenchError
from cifarbench.models.model_ref import resolve_model, shipped_models
from cifarbench.paths import BUNDLED_TEST_ARCHIVE, trained_dir
from cifarbench.sysinfo import environment


def collect() -> dict:
    env = environment()
    try:
        m = resolve_model(None)
        default = {"name": m.name, "path": str(m.directory), "artifacts": list(m.artifacts),
                   "test_accuracy": m.metrics.get("test", {}).get("accuracy")}
    except CifarbenchError as exc:
        default = {"error": str(exc)}
        m = None
    env["backends"] = {name: (unavailable_reason(name, m) or "available") for name in BACKENDS}
    env["default_model"] = default
    env["default_backend"] = _auto(m)
    env["auto_cache"] = cached_auto_choices(env)
    env["shipped_models"] = shipped_models()
    env["trained_dir"] = str(trained_dir())
    env["bundled_test_data"] = str(BUNDLED_TEST_ARCHIVE) if BUNDLED_TEST_ARCHIVE.is_file() else None
    env["warnings"] = []
    if env["versions"].get("onnxruntime") and env["versions"].get("onnxruntime-gpu"):
        env["warnings"].append("both onnxruntime and onnxruntime-gpu are installed; they share one module and the "
                               "last installed wins: pip uninstall -y onnxruntime onnxruntime-gpu && "
                               "pip install onnxruntime-gpu")
    return env


def _auto(m: object) -> dict:
    """The cached `auto` choice for the default model on the CPU (info never probes: it must stay instant)."""
    if m is None:
        return {"choice": None, "how": "no default model"}
    from cifarbench.backends.autoselect import cached_choice

    try:
        return cached_choice(m)  # type: ignore[arg-type]
    except CifarbenchError as exc:
        return {"choice": None, "how": str(exc)}


def cached_auto_choices(env: dict) -> list[dict]:
    """Every cached `auto` choice, newest first: model, batch size, threads, device, the choice, when measured.

    ``current`` says whether the entry's machine (CPU, flags, usable cores) and versions are this one's (others are never used here,
    e.g. after a package upgrade, but are kept until the cache rotates them out).
    """
    from cifarbench.backends.autoselect import cached_entries, machine_key

    here = machine_key()  # CPU model, flags, usable cores, versions: what lookup() compares
    out = []
    for e in cached_entries():
        key = e.get("key") if isinstance(e.get("key"), dict) else {}
        figures = e.get("figures") if isinstance(e.get("figures"), dict) else {}
        cands = key.get("candidates") if isinstance(key.get("candidates"), dict) else {}
        devices = sorted({str(c.get("device")) for c in cands.values() if isinstance(c, dict)})
        out.append({
            "model": e.get("model"), "choice": e.get("choice"), "batch_size": key.get("batch"),
            "threads": key.get("threads"), "device": ",".join(devices) or None, "measured_at": e.get("measured_at"),
            "images_per_s": {n: f.get("images_per_s") for n, f in figures.items() if isinstance(f, dict)},
            "current": all(key.get(k) == v for k, v in here.items()),
        })
    return out


def _cache_text(c: dict) -> str:
    tp = (c["images_per_s"] or {}).get(c["choice"])
    rate = f", {tp:,.0f} img/s" if isinstance(tp, (int, float)) else ""
    where = f"batch {c['batch_size']}, threads {c['threads'] or 'default'}, {c['device'] or 'cpu'}"
    stale = "" if c["current"] else " [another CPU, core count or package versions: not used here]"
    return f"{c['choice']}{rate} ({where}), measured {c['measured_at']}{stale}"


def _auto_text(a: dict) -> str:
    if not a.get("choice"):
        return a["how"]
    if a["how"] != "measured":
        return f"{a['choice']} ({a['how']})"
    ranked = sorted(a["figures"].items(), key=lambda kv: -kv[1]["images_per_s"])
    figures = ", ".join(f"{n} {f['images_per_s']:,.0f} img/s, {f['batch1_ms']:.2f} ms at batch 1" for n, f in ranked)
    return f"{a['choice']}, measured {a['measured_at']}: {figures}"


@click.command("info")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")
def command(as_json: bool) -> None:
    """Versions, CPU model and speed flags, GPUs, onnxruntime providers, backends, default model."""
    info = collect()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    from rich.markup import escape
    from rich.table import Table

    from cifarbench.cli.ui import stdout_console

    con = stdout_console()
    cpu = info["cpu"]
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    for k, v in info["versions"].items():
        t.add_row(k, escape(v) if v else "[dim]not installed[/dim]")
    # Every value is escaped: Rich would read "pip install 'cifarbench[train]'" as markup and drop "[train]".
    t.add_row("platform", escape(info["platform"]))
    t.add_row("cpu", escape(f"{cpu['model']} ({cpu['usable_cores']} usable of {cpu['cores']} cores)"))
    t.add_row("cpu flags", " ".join(f if on else f"[dim]-{f}[/dim]" for f, on in cpu["flags"].items()))
    t.add_row("gpus", escape(", ".join(info["gpus"]) or "none"))
    t.add_row("onnxruntime providers", escape(", ".join(info["onnxruntime_providers"]) or "none"))
    for name, status in info["backends"].items():
        t.add_row(f"backend {name}", "[green]available[/green]" if status == "available" else f"[yellow]{escape(status)}[/yellow]")
    d = info["default_model"]
    t.add_row("default model", escape(f"{d['name']} at {d['path']}") if "name" in d else f"[red]{escape(d['error'])}[/red]")
    t.add_row("default backend (auto)", escape(_auto_text(info["default_backend"])))
    for i, c in enumerate(info["auto_cache"]):
        t.add_row("cached auto choices" if i == 0 else "", escape(f"{c['model']}: {_cache_text(c)}"))
    if not info["auto_cache"]:
        t.add_row("cached auto choices", "none yet (classify, serve and bench --backend auto measure and cache one)")
    t.add_row("shipped models", escape(", ".join(info["shipped_models"]) or "none"))
    t.add_row("bundled test data", escape(info["bundled_test_data"]) if info["bundled_test_data"] else "[red]missing[/red]")
    con.print(t)
    for w in info["warnings"]:
        click.echo(f"warning: {w}", err=True)
