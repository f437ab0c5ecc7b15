"""``ADAPTER.md``: the card that travels with every saved adapter."""

from __future__ import annotations

from pathlib import Path


def _fmt_size(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def write_card(path: Path, meta: dict) -> None:
    """Write the adapter card from the adapter metadata (see ``save_adapter``)."""
    cfg = meta["config"]
    info = meta.get("info") or {}
    method = cfg["method"]
    peft = method in ("lora", "dora")
    lines = [
        f"# Adapter `{cfg['name']}` — {method} on {meta['core']}",
        "",
        "| | |",
        "|---|---|",
        f"| core | {meta['core']} (weights fingerprint `{meta['core_fingerprint']}`) |",
        f"| core checkpoint | {meta.get('core_checkpoint') or 'not recorded'} |",
        f"| method | {method} |",
    ]
    if method not in ("full", "none"):
        lines += [
            f"| targets | {', '.join(cfg['targets'])} ({len(meta.get('modules', []))} modules) |",
            f"| rank / alpha / dropout | {cfg['rank']} / {cfg['alpha']} / {cfg['dropout']} |",
        ]
        if peft:
            lines.append(f"| fused qkv | {'q and v slices only (k frozen)' if cfg['qkv_slices'] == 'qv' else 'whole'} |")
    total = meta.get("core_parameters")
    params = meta.get("adapter_parameters", 0)
    share = f" ({100 * params / total:.3f}% of the core's {total:,})" if total else ""
    lines += [
        f"| parameters | {params:,}{share} |",
        f"| size on disk | {_fmt_size(meta.get('size_bytes'))} |",
        f"| created | {meta.get('created', '?')} with adapt3d {meta.get('adapt3d_version', '?')} |",
        "",
        "## Training data",
        "",
        str(info.get("data", "Not recorded.")),
        "",
    ]
    if info.get("caveats"):
        lines += ["## Caveats", ""] + [f"- {c}" for c in info["caveats"]] + [""]
    if info.get("metrics"):
        lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in info["metrics"].items()] + [""]
    lines += ["## Loading", "", "```python", "import adapt3d", "from adapt3d.tuners import load_adapter", ""]
    lines += [f'core = adapt3d.load_core("{meta["core"]}", "CORE_CHECKPOINT")', 'model = load_adapter(core, "THIS_DIR")']
    if peft:
        lines += ["", "# or with peft directly:", "from peft import PeftModel", 'model = PeftModel.from_pretrained(core, "THIS_DIR")']
    lines += ["```", ""]
    path.write_text("\n".join(lines))
