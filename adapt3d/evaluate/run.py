"""``adapt3d evaluate``: the N-click protocol on any nnU-Net raw dataset, written as a run directory.

Cores are evaluated by the N-click evaluator their contract names (``adapt3d.evaluate.evaluators``:
crops, zoom-out-zoom-in, slices). Other protocols, the same for every core (the CVPR 2025
challenge's), are registered by name in ``PROTOCOLS``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from adapt3d.config import build_dataclass
from adapt3d.cores.preprocessing import Preprocessing
from adapt3d.data.domain_config import DomainSection
from adapt3d.data.domains import load_domain
from adapt3d.evaluate.cvpr25_run import Cvpr25Protocol, evaluate_items_cvpr25
from adapt3d.evaluate.evaluators import Evaluator, core_evaluator
from adapt3d.evaluate.nclick import Protocol
from adapt3d.infer.session import load_model
from adapt3d.registry import Registry
from adapt3d.run_record import run_record
from adapt3d.runs import caveats, env_record, now, one_shot_run_dir, write_json


#: The default protocol's name: the N-click evaluator of the core's contract.
DEFAULT_PROTOCOL = "nclick"
#: Protocols other than the default, by name (the same for every core).
PROTOCOLS: Registry[Evaluator] = Registry("evaluation protocol")
PROTOCOLS.register(Cvpr25Protocol.NAME, Evaluator(Cvpr25Protocol, evaluate_items_cvpr25, automatic=True))


def evaluator_for(core_type: str, protocol: str = DEFAULT_PROTOCOL) -> Evaluator:
    """The evaluator of ``protocol`` (default: the N-click evaluator of core ``core_type``'s contract)."""
    if protocol != DEFAULT_PROTOCOL:
        return PROTOCOLS.get(protocol)
    return core_evaluator(core_type)


def make_protocol(core_type: str, protocol: str = DEFAULT_PROTOCOL, **options: Any) -> Protocol:
    """The settings of ``protocol`` for ``core_type``; an option it does not have is a ConfigError."""
    return build_dataclass(evaluator_for(core_type, protocol).protocol, options, f"evaluation protocol {protocol} of {core_type}")


def protocol_name(protocol: Protocol) -> str:
    """The registered name of a protocol's settings (``nclick`` for the default ones)."""
    return getattr(protocol, "NAME", DEFAULT_PROTOCOL)


def core_protocol(core_type: str, preprocessing: Preprocessing, options: Mapping[str, Any], protocol: str = DEFAULT_PROTOCOL) -> Protocol:
    """``make_protocol`` with the core's spacing and normalisation wherever ``options`` do not set them."""
    defaults: dict[str, Any] = {"normalization": preprocessing.normalization}
    if preprocessing.spacing is not None:
        defaults["target_spacing"] = tuple(preprocessing.spacing)
    return make_protocol(core_type, protocol, **{**defaults, **options})


def run_evaluation(
    *,
    core: str,
    core_type: str = "sam-med3d",
    adapter: str | None = None,
    domain: DomainSection,
    options: Mapping[str, Any],
    protocol: str = DEFAULT_PROTOCOL,
    out: Path,
    core_description: str = "",
    overwrite: bool = False,
    save_predictions: bool = True,
    device: str = "cpu",
    auto: bool = False,
) -> Path:
    """Evaluate the frozen core (``before``) and, with ``adapter``, the adapted model (``after``).

    ``protocol`` names the protocol (``nclick``, ``cvpr25``) and ``options`` are its settings
    (:func:`make_protocol`); their ``target_spacing`` and
    ``normalization`` default to the core's own preprocessing (``model.preprocessing``).
    ``auto``: the adapted model's automatic masks from the adapter's class prompts as click count 0.
    """
    started, t0 = now(), time.time()
    evaluate_fn = evaluator_for(core_type, protocol).evaluate
    seed = make_protocol(core_type, protocol, **options).seed  # bad options fail before any data or model is read
    if auto:  # adapt3d.auto: checked before any data or model is read
        from adapt3d.auto.evaluate import AutoMasks, evaluation_prompts
        prompts = evaluation_prompts(adapter, evaluator_for(core_type, protocol))
    dom = load_domain(domain, "target", seed=seed, all_test=True)
    model = load_model(core, core_type=core_type, adapter=adapter, device=device)
    name, protocol = protocol, core_protocol(core_type, model.preprocessing, options, protocol)
    used = dataclasses.replace(model.preprocessing, normalization=protocol.normalization, spacing=(
        tuple(protocol.target_spacing) if model.preprocessing.spacing is not None or "target_spacing" in options else None))
    fingerprint = model.fingerprint if adapter is not None else None
    auto_masks = AutoMasks(model, prompts, protocol, dom.modality) if auto else None
    with one_shot_run_dir(out, overwrite=overwrite) as work:  # <out>.partial until finished
        def evaluate(m, stage: str) -> dict:
            pred_dir = work / "predictions" / dom.name / stage if save_predictions else None
            extra = {"auto": auto_masks} if auto_masks is not None and stage == "after" else {}
            return evaluate_fn(m, dom.split.test, dom.modality, protocol, predictions_dir=pred_dir, run_dir=work, desc=f"{stage}: {dom.name}", **extra)

        if adapter is None:
            before, after = evaluate(model, "before"), None
        else:
            with model.using(None):
                before = evaluate(model, "before")
            after = evaluate(model, "after")
        domains = {dom.name: {**dom.record(), "before": before, "after": after}}
        adapter_record = None
        if adapter is not None:
            from adapt3d.tuners import read_adapter_meta

            meta = read_adapter_meta(adapter)
            adapter_record = {**meta["config"], "trainable_parameters": meta.get("adapter_parameters"),
                              "size_bytes": meta.get("size_bytes"), "dir": str(Path(adapter).resolve())}
        if fingerprint is None:
            from adapt3d.cores import core_fingerprint

            fingerprint = core_fingerprint(model)
        write_json(work / "env.json", env_record(
            seed=protocol.seed, data_hashes={dom.dataset.name: domains[dom.name]["data_hash"]}, core_fingerprint=fingerprint,
            device=device, started=started, finished=now(), wall_seconds=round(time.time() - t0, 1),
        ))
        write_json(work / "metrics.json", run_record(
            "evaluate", name=out.name,
            core={"name": core_type, "checkpoint": str(core), "fingerprint": fingerprint, "description": core_description,
                  "preprocessing": used.to_dict()},
            adapter=adapter_record, protocol=name, clicks=list(protocol.clicks), nsd_tolerance_mm=protocol.nsd_tolerance_mm,
            domains=domains, retention=None, training=None, caveats=caveats(core_description, domains),
        ))
    return out
