"""Assemble the report document (sections in a fixed order) from the loaded runs."""

from __future__ import annotations

from adapt3d.report import figures, tables
from adapt3d.report.document import Block, Bullets, Details, Document, Figure, Heading, Note, Section, Text
from adapt3d.report.overlays import domain_overlays
from adapt3d.report.preservation import preservation_table
from adapt3d.report.runs import Run, domain_label

#: Section ids in order; "comparison" only appears when several runs are given.
SECTION_IDS = ("overview", "results", "comparison", "retention", "curves", "overlays", "parameters", "provenance")


def build_document(runs: list[Run], generated: str, title: str | None = None) -> tuple[Document, list[dict]]:
    """The report document and the JSON records of every overlay (shown or skipped)."""
    overlay_section, overlay_records = _overlays(runs)
    sections = [_overview(runs, generated), _results(runs)]
    if len(runs) > 1:
        sections.append(_comparison(runs))
    sections += [_retention(runs), _curves(runs), overlay_section, _parameters(runs), _provenance(runs)]
    names = ", ".join(r.label for r in runs)
    doc = Document(
        title=title or f"adapt3d cross-domain report: {names}",
        subtitle=f"Generated {generated} from {len(runs)} run director{'y' if len(runs) == 1 else 'ies'}.",
        sections=sections,
    )
    return doc, overlay_records


def _overview(runs: list[Run], generated: str) -> Section:
    blocks: list[Block] = [Heading("Runs")]
    items = []
    for run in runs:
        adapter = run.metrics.get("adapter")
        method = "no adapter (frozen core)" if adapter is None else f"adapter {adapter['method']}"
        items.append(f"{run.label}: {run.metrics['kind']} run, core {run.metrics['core']['name']}, {method} — {run.path}")
    blocks += [Bullets(items), Text(f"Report generated {generated}.")]
    blocks.append(Heading("What the core was trained on"))
    descriptions = {r.label: (r.metrics["core"].get("description") or "").strip() for r in runs}
    if len(set(descriptions.values())) == 1 and all(descriptions.values()):
        blocks.append(Text(next(iter(descriptions.values()))))
    else:
        for label, text in descriptions.items():
            if text:
                blocks.append(Text(f"{label}: {text}"))
            else:
                blocks.append(Note(f"{label}: what the core was trained on is NOT RECORDED (metrics.json core.description "
                                   "is missing): numbers cannot be interpreted without it.", warning=True))
    blocks.append(Heading("Caveats"))
    domains = tables.merged_domains(runs)
    simulated = [domain_label(n, d) for n, d in domains.items() if d.get("simulated")]
    silver = [f"{domain_label(n, d)} ({d.get('dataset', '?')})" for n, d in domains.items() if d.get("silver_standard")]
    if simulated:
        blocks.append(Note(f"SIMULATED domains (rendered from real MRI/CT, not real acquisitions): {', '.join(simulated)}.", warning=True))
    if silver:
        blocks.append(Note(f"Silver-standard labels (model predictions, not expert annotations): {', '.join(silver)}.", warning=True))
    caveats = {r.label: r.metrics.get("caveats") or [] for r in runs}
    common = [c for c in caveats[runs[0].label] if all(c in cs for cs in caveats.values())]
    items = [c if len(runs) == 1 else f"all runs: {c}" for c in common]
    items += [f"{label}: {c}" for label, cs in caveats.items() for c in cs if c not in common]
    blocks.append(Bullets(items) if items else Note("No caveats recorded in metrics.json.", warning=True))
    return Section("overview", "Overview and caveats", blocks)


def _results(runs: list[Run]) -> Section:
    blocks: list[Block] = []
    for run in runs:
        blocks.append(Heading(run.label))
        if run.metrics.get("protocol") == "cvpr25":
            blocks.append(tables.cvpr25_table(run))
        blocks.append(tables.results_table(run))
        automatic = tables.auto_table(run)
        if automatic is not None:
            blocks.append(automatic)
    return Section("results", "Domains × clicks: before and after adaptation", blocks)


def _comparison(runs: list[Run]) -> Section:
    table, notes = tables.comparison_table(runs)
    return Section("comparison", "Runs side by side", [*notes, table])


def _retention(runs: list[Run]) -> Section:
    png = figures.retention_figure(runs)
    blocks: list[Block] = []
    if png is None:
        blocks.append(Note("No run recorded a retention history (evaluate runs or no reference set)."))
    else:
        blocks.append(Figure("retention", png, "CT Dice retention over training per run; dashed: the guard threshold."))
    blocks.append(tables.retention_table(runs))
    if any((r.metrics.get("retention") or {}).get("merged") for r in runs):
        blocks += [Heading("With and without CT preservation; the merged export"), preservation_table(runs)]
    return Section("retention", "Retention on the reference (CT) domain", blocks)


def _curves(runs: list[Run]) -> Section:
    blocks: list[Block] = [
        Figure("dice_vs_clicks", figures.curves_figure(runs), "Mean Dice vs number of clicks per domain: dashed before "
               "(frozen core), solid after adaptation, one colour per run."),
        Heading("Per class at the largest click count"),
        Figure("per_class", figures.per_class_figure(runs), "Per-class mean Dice: hatched grey the frozen core "
               "(before), coloured each run after adaptation."),
    ]
    blocks += [tables.per_class_table(run) for run in runs]
    return Section("curves", "Dice vs clicks and per-class results", blocks)


def _overlays(runs: list[Run]) -> tuple[Section, list[dict]]:
    blocks: list[Block] = []
    records: list[dict] = []
    for run in runs:
        for name, dom in run.domains.items():
            if dom["role"] != "target":
                continue
            found, recs = domain_overlays(run, name)
            blocks += [Heading(f"{run.label} / {domain_label(name, dom)}"), *found]
            records += recs
    if not blocks:
        blocks.append(Note("No target domains: no overlays."))
    return Section("overlays", "Slice overlays (best, median, worst case)", blocks), records


def _parameters(runs: list[Run]) -> Section:
    return Section("parameters", "Trainable parameters and adapter size",
                   [tables.parameters_table(runs), Heading("Training"), tables.training_table(runs)])


def _provenance(runs: list[Run]) -> Section:
    blocks: list[Block] = []
    for run in runs:
        blocks.append(Heading(run.label))
        blocks += [Note(n, warning=True) for n in run.notes]
        blocks.append(tables.env_table(run))
        if run.config_text is not None:
            blocks.append(Details(f"config.yaml of {run.label}", run.config_text, "yaml"))
    return Section("provenance", "Run provenance", blocks)
