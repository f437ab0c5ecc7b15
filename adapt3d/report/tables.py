"""Report tables built from the loaded runs; every number is formatted straight from metrics.json.

Dice and NSD are shown ×100 with one decimal as ``mean ± sd``; retention as a percentage.
"""

from __future__ import annotations

import math

from adapt3d.evaluate.metrics import summarise
from adapt3d.report.document import Note, Table
from adapt3d.report.runs import STAGES, Run, best_retention, class_stat, domain_label, stat
from adapt3d.run_record import history_ct_dice

DASH = "—"


def fmt_stat(s: dict | None) -> str:
    """``71.3 ± 4.2`` from ``{"mean": 0.713, "sd": 0.042}`` (×100); a dash when absent."""
    if s is None or s.get("mean") is None:
        return DASH
    sd = s.get("sd")
    return f"{100 * s['mean']:.1f}" + ("" if sd is None else f" ± {100 * sd:.1f}")


def fmt_pct(x: float | None) -> str:
    """``98.6%`` from 0.986; a dash when absent."""
    return DASH if x is None else f"{100 * x:.1f}%"


def fmt_bytes(n: float | None) -> str:
    """Bytes as kB/MB."""
    if n is None:
        return DASH
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _delta(before: dict | None, after: dict | None) -> str:
    if before is None or after is None or before.get("mean") is None or after.get("mean") is None:
        return DASH
    return f"{100 * (after['mean'] - before['mean']):+.1f}"


def _n(before: dict | None, after: dict | None) -> str:
    ns = [str(s["n"]) for s in (before, after) if s is not None and s.get("n") is not None]
    return DASH if not ns else ns[0] if len(set(ns)) == 1 else "/".join(ns)


def click_counts(run: Run) -> list[int]:
    """The run's click counts, with 0 first where an evaluation has automatic masks (adapt3d.auto)."""
    auto = any("0" in (dom.get(s) or {}).get("summary", {}) for dom in run.domains.values() for s in STAGES)
    return sorted(set(run.clicks) | ({0} if auto else set()))


def click_label(k: int) -> str:
    """A click count as a table shows it: 0 is the automatic mask of the class prompts."""
    return "0 (auto)" if k == 0 else str(k)


def merged_domains(runs: list[Run]) -> dict[str, dict]:
    """Domain name → metadata over all runs (first run's fields; simulated/silver flags OR-ed)."""
    merged: dict[str, dict] = {}
    for run in runs:
        for name, info in run.domains.items():
            if name not in merged:
                merged[name] = dict(info)
            for flag in ("simulated", "silver_standard"):
                merged[name][flag] = bool(merged[name].get(flag)) or bool(info.get(flag))
    return merged


def results_table(run: Run) -> Table:
    """Domains × clicks, before and after adaptation, for one run."""
    rows = []
    for name, dom in run.domains.items():
        for k in click_counts(run):
            b, a = (stat(dom[s], k, "dice") for s in STAGES)
            nb, na = (stat(dom[s], k, "nsd") for s in STAGES)
            rows.append([domain_label(name, dom), click_label(k), fmt_stat(b), fmt_stat(a), _delta(b, a), fmt_stat(nb), fmt_stat(na), _n(b, a)])
    columns = ["domain", "clicks", "Dice before", "Dice after", "Δ Dice", "NSD before", "NSD after", "n"]
    caption = f"{run.label}: Dice and NSD ×100 (NSD tolerance {run.metrics.get('nsd_tolerance_mm', '?')} mm), mean ± sd over n case × class pairs."
    return Table(columns, rows, caption, numeric={1, 2, 3, 4, 5, 6, 7})


def comparison_table(runs: list[Run]) -> tuple[Table, list[Note]]:
    """Runs side by side: "after" Dice per run, with the "before" baseline (shared when identical)."""
    domains = merged_domains(runs)
    clicks = sorted({k for r in runs for k in click_counts(r)})
    keys = [(d, k) for d in domains for k in clicks]
    befores = {key: [stat(r.domains[key[0]]["before"], key[1], "dice") if key[0] in r.domains else None for r in runs] for key in keys}
    shared = all(len({_fingerprint(s) for s in values if s is not None}) <= 1 for values in befores.values())
    notes = []
    if shared:
        columns = ["domain", "clicks", "Dice before (frozen core)"]
    else:
        columns = ["domain", "clicks"] + [f"Dice before: {r.label}" for r in runs]
        notes.append(Note("The frozen-core (before) Dice differs between runs (different cores, data or prompts): each run's baseline is shown.", warning=True))
    columns += [f"Dice after: {r.label}" for r in runs] + ["best after"]
    rows = []
    for d, k in keys:
        before = befores[(d, k)]
        afters = [stat(r.domains[d]["after"], k, "dice") if d in r.domains else None for r in runs]
        if all(s is None for s in before + afters):
            continue
        if shared:
            first = next((s for s in before if s is not None), None)
            cells = [fmt_stat(first)]
        else:
            cells = [fmt_stat(s) for s in before]
        scored = [(s["mean"], r.label) for s, r in zip(afters, runs) if s is not None and s.get("mean") is not None]
        best = max(scored)[1] if scored else DASH
        rows.append([domain_label(d, domains[d]), click_label(k)] + cells + [fmt_stat(s) for s in afters] + [best])
    caption = "Dice ×100 (mean ± sd) of each run after adaptation, against the frozen core before adaptation."
    return Table(columns, rows, caption, numeric=set(range(1, len(columns) - 1))), notes


def _fingerprint(s: dict) -> tuple:
    return (s.get("mean"), s.get("sd"), s.get("n"))


def per_class_table(run: Run) -> Table:
    """Per-class Dice and NSD before/after at the run's largest click count."""
    k = str(run.kmax)
    rows = []
    for name, dom in run.domains.items():
        for cls in dom["classes"]:
            cells = []
            for metric in ("dice", "nsd"):
                cells += [fmt_stat(class_stat(dom[stage], cls, run.kmax, metric)) for stage in STAGES]
            if any(c != DASH for c in cells):  # classes only trained on (never evaluated) are left out
                rows.append([domain_label(name, dom), cls] + cells)
    columns = ["domain", "class", "Dice before", "Dice after", "NSD before", "NSD after"]
    return Table(columns, rows, f"{run.label}: per class at {k} clicks (×100, mean ± sd over cases).", numeric={2, 3, 4, 5})


def retention_table(runs: list[Run]) -> Table:
    """Frozen / final / best CT retention per run and the guard's setting."""
    rows = []
    for run in runs:
        ret = run.metrics.get("retention")
        if ret is None:
            rows.append([run.label] + [DASH] * 7 + ["not recorded"])
            continue
        history = [h for h in ret.get("history", []) if h.get("retention") is not None]
        best = best_retention(ret)
        kept_step = ret.get("best_checkpoint_step")
        kept = next((h for h in history if h["step"] == kept_step), None)
        guard = ret.get("guard") or {}
        guard_text = DASH
        if guard.get("threshold") is not None:
            state = "TRIGGERED" if guard.get("triggered") else "not triggered"
            guard_text = f"≥ {fmt_pct(guard['threshold'])}, {guard.get('action', '?')}, {state}"
        rows.append([
            run.label,
            f"{ret.get('reference_domain', '?')} (reference), {ret.get('clicks', '?')} click(s)",
            DASH if ret.get("frozen") is None else f"{100 * ret['frozen']:.1f}",
            DASH if not history or history_ct_dice(history[-1], ret.get("frozen")) is None
            else f"{100 * history_ct_dice(history[-1], ret.get('frozen')):.1f}",
            fmt_pct(ret.get("final")),
            DASH if best is None else f"{fmt_pct(best['retention'])} (step {best['step']})",
            DASH if kept_step is None else f"step {kept_step}" + ("" if kept is None else f": {fmt_pct(kept['retention'])}"),
            DASH if not history else str(len(history)),
            guard_text,
        ])
    columns = ["run", "reference set", "frozen CT Dice", "final CT Dice", "final retention", "best retention",
               "kept checkpoint", "validations", "guard"]
    return Table(columns, rows, "Retention = adapted model's CT Dice / frozen core's CT Dice (same prompts and seeds).", numeric={2, 3, 4, 7})


def parameters_table(runs: list[Run]) -> Table:
    """Adapter method, trainable parameters and adapter size per run."""
    rows = []
    for run in runs:
        a = run.metrics.get("adapter")
        if a is None:
            rows.append([run.label, "none (frozen core)", DASH, DASH, "0", DASH, DASH])
            continue
        targets = ", ".join(a.get("targets") or []) or DASH
        if a.get("qkv_slices"):
            targets += f" (fused qkv: {a['qkv_slices']})"
        n = a.get("trainable_parameters")
        pct = a.get("trainable_percent")
        rows.append([
            run.label,
            a["method"],
            f"{a.get('rank', DASH)} / {a.get('alpha', DASH)}",
            targets,
            DASH if n is None else f"{int(n):,}",
            DASH if pct is None else f"{pct:.3f}%",
            fmt_bytes(a.get("size_bytes")),
        ])
    columns = ["run", "method", "rank / alpha", "targets", "trainable parameters", "trainable %", "adapter size"]
    return Table(columns, rows, "Trainable parameters of the adapted model; the core stays frozen.", numeric={4, 5, 6})


def training_table(runs: list[Run]) -> Table:
    """Training length and options per run (adapt runs)."""
    rows = []
    for run in runs:
        t = run.metrics.get("training")
        if t is None:
            rows.append([run.label, run.metrics["kind"], DASH, DASH, DASH, DASH, DASH])
            continue
        wall = t.get("wall_seconds")
        rows.append([
            run.label, run.metrics["kind"], str(t.get("steps", DASH)), str(t.get("epochs", DASH)),
            DASH if wall is None else f"{wall:.1f} s", _yes(t.get("context_head")), _yes(t.get("pseudolabels")),
        ])
    return Table(["run", "kind", "steps", "epochs", "wall time", "context head", "pseudo-labels"], rows, numeric={2, 3, 4})


def _yes(flag: object) -> str:
    return DASH if flag is None else "yes" if flag else "no"


def env_table(run: Run) -> Table:
    """Key provenance facts from env.json (versions, git, seed, hashes)."""
    env = run.env or {}
    packages = env["packages"] if isinstance(env.get("packages"), dict) else {}
    data_hashes = env["data_hashes"] if isinstance(env.get("data_hashes"), dict) else {}
    git = env.get("git_hash")
    facts = [
        ("adapt3d", env.get("adapt3d_version")),
        ("python", env.get("python")),
        ("packages", ", ".join(f"{k} {v}" for k, v in packages.items()) or None),
        ("git", None if git is None else f"{git}{' (dirty)' if env.get('git_dirty') else ''}"),
        ("seed", env.get("seed")),
        ("config hash", env.get("config_hash")),
        ("data hashes", ", ".join(f"{k}: {v}" for k, v in data_hashes.items()) or None),
        ("core", f"{run.metrics['core']['name']} (fingerprint {run.metrics['core'].get('fingerprint') or 'not recorded'})"),
        ("core checkpoint", run.metrics["core"].get("checkpoint") or "none recorded"),
        ("device", env.get("device")),
        ("started / finished", " / ".join(str(env.get(k) or "?") for k in ("started", "finished"))),
        ("wall time", f"{env['wall_seconds']:.1f} s" if isinstance(env.get("wall_seconds"), (int, float)) else env.get("wall_seconds")),
        ("command", env.get("command")),
        ("platform", env.get("platform")),
    ]
    return Table(["key", "value"], [[k, "not recorded" if v is None else str(v)] for k, v in facts])


def cvpr25_table(run: Run) -> Table:
    """The CVPR 2025 challenge's figures (``--protocol cvpr25`` runs) per domain and stage."""
    rows = []
    strategies = set()
    for name, dom in run.domains.items():
        for stage in STAGES:
            ev = dom.get(stage)
            if not ev or "challenge" not in ev:
                continue
            strategies.add(ev.get("prompt_strategy", "?"))
            ch = ev["challenge"]
            auc = [DASH if ch.get(k, {}).get("mean") is None else f"{ch[k]['mean']:.3f} ± {ch[k].get('sd') or 0:.3f}" for k in ("DSC_AUC", "NSD_AUC")]
            rows.append([domain_label(name, dom), stage, *auc, fmt_stat(ch.get("DSC_Final")), fmt_stat(ch.get("NSD_Final")),
                         fmt_stat(stat(ev, 0, "dice")), fmt_stat(stat(ev, 1, "dice")), f"{ch['time_per_class_s']['mean']:.2f}",
                         str(ch["DSC_AUC"]["n"])])
    columns = ["domain", "stage", "DSC_AUC", "NSD_AUC", "DSC final", "NSD final", "DSC auto (0 clicks)", "DSC box (step 1)",
               "s / class (6 steps)", "images"]
    caption = (f"{run.label}: CVPR 2025 challenge protocol (box, then 5 clicks at the largest error; per image the mean over its "
               "classes; AUC = trapezoid over the 5 click steps, maximum 4; Dice/NSD ×100, NSD at 2 mm). "
               f"Prompt strategy: {'; '.join(sorted(strategies))}. The per-step table below counts steps as clicks: "
               "step 1 = the box, step k = the box and k − 1 clicks; auto (step 0, evaluate --auto) = the learned class "
               "prompts alone, no box, outside the challenge's AUC.")
    return Table(columns, rows, caption, numeric=set(range(2, 10)))


def auto_table(run: Run) -> Table | None:
    """Automatic (0 clicks) Dice next to the fewest-click Dice before and after adaptation, on the same
    case × class pairs (those with an automatic mask); None when the run has no automatic masks."""
    k = min((c for c in run.clicks if c > 0), default=1)
    rows, trained = [], []
    for name, dom in run.domains.items():
        after = dom.get("after") or {}
        pairs = [r for r in after.get("per_case", []) if "0" in r.get("dice", {})]
        if not pairs:
            continue
        trained += [c for c in (after.get("automatic") or {}).get("classes", []) if c not in trained]
        before = {(r["case"], r["class"]): r for r in (dom.get("before") or {}).get("per_case", [])}
        classes = list(dict.fromkeys(r["class"] for r in pairs))
        for cls in [*classes, None] if len(classes) > 1 else classes:
            recs = [r for r in pairs if cls is None or r["class"] == cls]
            cells = [summarise(r["dice"]["0"] for r in recs),
                     summarise(before.get((r["case"], r["class"]), {}).get("dice", {}).get(str(k), math.nan) for r in recs),
                     summarise(r["dice"].get(str(k), math.nan) for r in recs)]
            rows.append([domain_label(name, dom), cls or "all", *(fmt_stat(c if c["n"] else None) for c in cells), str(len(recs))])
    if not rows:
        return None
    columns = ["domain", "class", "Dice auto (0 clicks)", f"Dice {k} click{'s' * (k > 1)} before", f"Dice {k} click{'s' * (k > 1)} after", "n"]
    caption = (f"{run.label}: the automatic mask (learned class prompts, no click; adapt3d.auto) against {k} click{'s' * (k > 1)} "
               "of the frozen core (before) and of the adapted model (after), over the same case × class pairs: those with "
               "a class prompt (classes without one are left out). Dice ×100, mean ± sd."
               + (f" Class prompts trained for: {', '.join(trained)}." if trained else ""))
    return Table(columns, rows, caption, numeric={2, 3, 4, 5})
