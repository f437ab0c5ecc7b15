"""One prepared device check: speed, memory and correctness of adapt3d on a (lent) GPU, side by side
with the official SAM-Med3D architecture (PyPI ``medim``) + peft in the same process.

    python benchmarks/gpu_check.py --device cuda --out benchmarks/results/gpu_check_<gpu>.json
    python benchmarks/gpu_check.py --device cpu --quick --out /tmp/quick.json   # same code, tiny sizes

Every check runs in its own try/except (a failure is recorded with its error, the others still run)
and the JSON is rewritten after each check, so a run cut short keeps what it measured:
``{"device": ..., "quick": ..., "checks": [{"name", "ok", "seconds", ...figures}]}``. All cores have
random weights (no pretrained weights are downloadable here); figures are speed/memory/parity, not
accuracy. ``--quick`` shrinks every size (tiny cores, small volumes) but runs the same code paths;
the test suite runs it. Goals (issue #16) are recorded beside the figures as ``goal_*`` and
``meets_goal``; they do not decide ``ok``, which means "ran and is numerically right".
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling benchmark modules

from gpu_check_common import (  # noqa: E402
    CHECKS, METHODS, REPO, Ctx, check, device_name, segvol_core, official_model, our_core,
)


@check("encoder_parity_latency")
def encoder_parity_latency(ctx: Ctx) -> dict:
    from adapt3d.cores.sam_med3d.attention import set_attention_backend

    ref = official_model(ctx).eval()
    ours = our_core(ctx, ref.state_dict()).eval().to(ctx.device)
    ref = ref.to(ctx.device)
    rows, ok = [], True
    for batch in ctx.enc_batches:
        x = torch.randn(batch, 1, ctx.size, ctx.size, ctx.size, generator=torch.Generator().manual_seed(2)).to(ctx.device)
        with torch.inference_mode():
            exact = ref.image_encoder(x).float()
            scale = exact.abs().max().item()
            for precision in ("fp32", "bf16"):
                row = {"batch": batch, "precision": precision}
                with ctx.autocast(precision):
                    row["official_ms"], out_ref = ctx.timed(lambda: ref.image_encoder(x))
                    for backend in ("closed-form", "padded"):
                        set_attention_backend(ours, backend)
                        row[f"adapt3d_{backend}_ms"], out = ctx.timed(lambda: ours.image_encoder(x))
                        row[f"{backend}_max_abs_diff_vs_official_fp32"] = (out.float() - exact).abs().max().item()
                set_attention_backend(ours, "auto")
                row["official_max_abs_diff_vs_official_fp32"] = (out_ref.float() - exact).abs().max().item()
                row["embedding_max_abs"] = scale
                if precision == "fp32":
                    ok &= row["closed-form_max_abs_diff_vs_official_fp32"] <= 1e-4 * max(scale, 1.0)
                else:  # within bf16 rounding: no worse than the official architecture's own bf16 error (+ slack)
                    ok &= row["closed-form_max_abs_diff_vs_official_fp32"] <= 2 * row["official_max_abs_diff_vs_official_fp32"] + 1e-2 * scale
                if batch == 1 and precision == "bf16":
                    row["goal_ms"], row["meets_goal"] = 8.0, row["adapt3d_closed-form_ms"] <= 8.0
                rows.append(row)
        del x
    return {"ok": bool(ok), "input": f"{ctx.size}^3", "rows": rows}


def _train_step_fn(ctx: Ctx, encode, decode, params, batch: int, precision: str):
    from adapt3d.train.losses import dice_ce_loss

    g = torch.Generator().manual_seed(3)
    x = torch.randn(batch, 1, ctx.size, ctx.size, ctx.size, generator=g).to(ctx.device)
    target = (torch.rand(batch, 1, ctx.size, ctx.size, ctx.size, generator=g) > 0.7).float().to(ctx.device)
    points = torch.full((batch, 1, 3), ctx.size / 2, device=ctx.device)
    labels = torch.ones(batch, 1, dtype=torch.int64, device=ctx.device)
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step():
        with ctx.autocast(precision):
            low = decode(encode(x), points, labels)
            up = F.interpolate(low.float(), size=(ctx.size,) * 3, mode="trilinear", align_corners=False)
            loss = dice_ce_loss(up, target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def _official_decode(ref):
    def decode(emb, points, labels):
        sparse, dense = ref.prompt_encoder(points=(points, labels), boxes=None, masks=None)
        low, _ = ref.mask_decoder(image_embeddings=emb, image_pe=ref.prompt_encoder.get_dense_pe(),
                                  sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)
        return low

    return decode


@check("train_step")
def train_step(ctx: Ctx) -> dict:
    from peft import LoraConfig, get_peft_model

    from adapt3d.tuners import AdaptedModel, AdapterConfig, resolve_targets

    base, official_base = our_core(ctx), official_model(ctx)  # copied per configuration (fast, same weights)
    combos = [(p, m, c) for p in ("fp32", "bf16") for m in METHODS for c in (False, True)]
    if ctx.quick:  # every method once, checkpointing and bf16 once each
        combos = [("fp32", m, False) for m in METHODS] + [("bf16", "lora-qv", True)]
    official = [(p, m) for p in ("fp32", "bf16") for m in ("lora", "full")]
    rows, ok = [], True
    for precision, method, ckpt in combos:
        ctx.reset_peak()
        model = AdaptedModel(copy.deepcopy(base), fingerprint="random weights")
        model.add(AdapterConfig(**METHODS[method]))
        model.to(ctx.device)
        model.core.image_encoder.grad_checkpointing = ckpt
        params = [p for p in model.parameters() if p.requires_grad]
        step = _train_step_fn(ctx, model.encode, lambda e, p, lab: model.decode(e, p, lab)[0], params, 2, precision)
        ms, loss = ctx.timed(step)
        row = {"impl": "adapt3d", "method": method, "precision": precision, "grad_checkpointing": ckpt,
               "step_ms": ms, "peak_gib": ctx.peak_gib(), "trainable": sum(p.numel() for p in params),
               "loss_finite": bool(torch.isfinite(loss).item())}
        ok &= row["loss_finite"]
        if method == "lora" and precision == "bf16":
            row["goal_ms"], row["goal_peak_gib"] = 60.0, 3.0
            row["meets_goal"] = ms <= 60.0 and row["peak_gib"] is not None and row["peak_gib"] <= 3.0
        rows.append(row)
        del model, params, step
    for precision, method in official[1:3] if ctx.quick else official:  # official + peft (medim: no checkpointing)
        ctx.reset_peak()
        ref = copy.deepcopy(official_base)
        if method == "lora":
            names = resolve_targets(base, "sam-med3d", AdapterConfig(method="lora").targets, linear=True)
            ref = get_peft_model(ref, LoraConfig(r=32, lora_alpha=32, target_modules=names)).base_model.model
        else:
            ref.requires_grad_(True)
        ref.to(ctx.device)
        params = [p for p in ref.parameters() if p.requires_grad]
        step = _train_step_fn(ctx, ref.image_encoder, _official_decode(ref), params, 2, precision)
        ms, loss = ctx.timed(step)
        rows.append({"impl": "official+peft" if method == "lora" else "official", "method": method,
                     "precision": precision, "grad_checkpointing": False, "step_ms": ms, "peak_gib": ctx.peak_gib(),
                     "trainable": sum(p.numel() for p in params), "loss_finite": bool(torch.isfinite(loss).item())})
        ok &= rows[-1]["loss_finite"]
        del ref, params, step
    return {"ok": bool(ok), "batch": 2, "input": f"{ctx.size}^3", "rows": rows}


@check("host_round_trips")
def host_round_trips(ctx: Ctx) -> dict:
    """Host reads per training step (5 click rounds): the batched on-device clicks (forced on, as on an
    accelerator), what training uses on this device by default, and the numpy-only ``center``."""
    import warnings

    from adapt3d.hostsync import HostSyncCounter
    from adapt3d.prompts import device_clicks
    from adapt3d.train.config import TrainSection
    from adapt3d.train.module import AdaptModule
    from adapt3d.tuners import AdaptedModel, AdapterConfig

    model = AdaptedModel(our_core(ctx), fingerprint="random weights")
    model.add(AdapterConfig(method="lora", rank=8))
    model.to(ctx.device)
    image = torch.randn(2, 1, ctx.size, ctx.size, ctx.size, device=ctx.device)
    target = torch.zeros_like(image)
    target[:, :, ctx.size // 4 : ctx.size // 2, ctx.size // 4 : ctx.size // 2, ctx.size // 4 : ctx.size // 2] = 1
    known = torch.ones_like(image)
    out = {}
    default_hosts = set(device_clicks.HOST_DEVICE_TYPES)
    for variant, simulator, hosts in (("random_on_device", "random", set()), ("random_default", "random", default_hosts),
                                      ("center", "center", default_hosts)):
        module = AdaptModule(model, TrainSection(click_rounds=5, click_simulator=simulator), seed=0)

        def step():
            loss = module.segmentation_loss(model.encode(image), {"label": target, "known": known}, np.random.default_rng(0))
            loss.backward()

        device_clicks.HOST_DEVICE_TYPES = hosts
        try:
            ms, _ = ctx.timed(step)
            with HostSyncCounter() as counter, warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if ctx.cuda:
                    torch.cuda.set_sync_debug_mode("warn")
                try:
                    step()
                finally:
                    if ctx.cuda:
                        torch.cuda.set_sync_debug_mode("default")
        finally:
            device_clicks.HOST_DEVICE_TYPES = default_hosts
        out[variant] = {"step_ms": ms, "host_reads_adapt3d": counter.from_files("adapt3d/"),
                        "host_reads_all": counter.total, "reads": dict(counter.counts),
                        "cuda_synchronizing_ops": sum("synchroniz" in str(w.message) for w in caught) if ctx.cuda else None}
    return {"ok": out["random_on_device"]["host_reads_adapt3d"] == 0, "batch": 2, "click_rounds": 5, **out}


def _experiment(ctx: Ctx, out: Path, *extra: str):
    from adapt3d.train.config import load_experiment

    accelerator = "gpu" if ctx.cuda else "cpu"
    small = ["train.samples_per_item=2", "train.batch_size=2", "train.click_rounds=2",
             "data.target.classes=[liver,spleen,kidney_right]", "data.target.test.classes=[spleen]"] if ctx.quick else []
    return load_experiment(REPO / "configs" / "experiment" / "demo_mr_lora.yaml", [
        f"output_dir={out}", f"train.accelerator={accelerator}", f"train.epochs={1 if ctx.quick else 3}",
        "eval.clicks=[1]", "eval.val_clicks=[1]", "eval.every_n_epochs=100", "eval.save_predictions=false",
        "data.reference.classes=[spleen]", *small, *extra,
    ])


class FitTimer(L.Callback):
    """Wall time, batches and volumes of ``fit`` (the evaluation before and after excluded)."""

    def on_train_start(self, trainer, module) -> None:
        self.t0, self.batches, self.volumes = time.perf_counter(), 0, 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.batches += 1
        self.volumes += int(batch["image"].shape[0])

    def on_train_end(self, trainer, module) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.t0


@check("adapt_run")
def adapt_run(ctx: Ctx) -> dict:
    from adapt3d.train.run import run_adaptation

    timer = FitTimer()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run = run_adaptation(_experiment(ctx, Path(tmp)), callbacks=(timer,))
        wall = time.perf_counter() - t0
        metrics = json.loads((run / "metrics.json").read_text())
    return {"ok": metrics["training"]["steps"] == timer.batches > 0, "config": "demo_mr_lora (demo core, LoRA r8)",
            "steps": timer.batches, "fit_seconds": round(timer.seconds, 2),
            "steps_per_s": round(timer.batches / timer.seconds, 2), "volumes_per_s": round(timer.volumes / timer.seconds, 2),
            "wall_seconds_incl_eval": round(wall, 1)}


@check("whole_volume_predict")
def whole_volume_predict(ctx: Ctx) -> dict:
    from whole_volume import TimedCore, synthetic_ct

    from adapt3d.infer import WholeVolumeConfig, WholeVolumePredictor

    shape, spacing = ((48, 48, 30), (1.5, 1.5, 1.5)) if ctx.quick else ((512, 512, 300), (0.8, 0.8, 1.5))
    core = TimedCore(our_core(ctx).eval().to(ctx.device), oracle=True)
    image, truth = synthetic_ct(shape, spacing)
    ctx.reset_peak()
    t0 = time.perf_counter()
    result = WholeVolumePredictor(core, WholeVolumeConfig()).predict(image, "CT", [tuple(n // 2 for n in shape)], [1])
    ctx.sync()
    wall = time.perf_counter() - t0
    mask = result.mask.astype(bool)
    dice = float(2 * (mask & truth).sum() / (mask.sum() + truth.sum()))
    return {"ok": mask.shape == shape and dice > 0.5, "volume": "x".join(map(str, shape)), "seconds": round(wall, 2),
            "encode_s": round(core.seconds["encode"], 2), "decode_s": round(core.seconds["decode"], 2),
            "peak_gib": ctx.peak_gib(), "dice_vs_object (oracle masks)": round(dice, 4), **result.summary()}


@check("segvol_zoom")
def segvol_zoom(ctx: Ctx) -> dict:
    from adapt3d.cores.segvol.zoom import zoom_out_zoom_in

    model = segvol_core(ctx).eval().to(ctx.device)
    shape = tuple(model.config.image_size)
    image = torch.rand(shape, generator=torch.Generator().manual_seed(4))
    centre = torch.tensor([[s / 2 for s in shape]])
    ctx.reset_peak()
    ms, result = ctx.timed(lambda: zoom_out_zoom_in(model, image, points=centre, labels=torch.tensor([1]), progress=False), repeats=1)
    return {"ok": tuple(result.logits.shape) == shape and bool(torch.isfinite(result.logits).all()),
            "volume": "x".join(map(str, shape)), "ms": ms, "windows": result.num_windows, "peak_gib": ctx.peak_gib()}


@check("segvol_lora_step")
def segvol_lora_step(ctx: Ctx) -> dict:
    from adapt3d.train.losses import dice_ce_loss
    from adapt3d.tuners import AdaptedModel, AdapterConfig

    model = AdaptedModel(segvol_core(ctx), fingerprint="random weights")
    model.add(AdapterConfig(method="lora", rank=32))
    model.to(ctx.device)
    shape = tuple(model.core.config.image_size)
    x = torch.rand(1, 1, *shape, device=ctx.device)
    target = (torch.rand(1, 1, *shape, device=ctx.device) > 0.8).float()
    points = torch.tensor([[[s / 2 for s in shape]]], device=ctx.device)
    labels = torch.ones(1, 1, dtype=torch.int64, device=ctx.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    rows = []
    for precision in ("fp32", "bf16"):
        ctx.reset_peak()

        def step():
            with ctx.autocast(precision):
                low, _ = model.decode(model.encode(x), points, labels)
                loss = dice_ce_loss(F.interpolate(low.float(), size=shape, mode="trilinear"), target)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss.detach()

        ms, loss = ctx.timed(step)
        rows.append({"precision": precision, "step_ms": ms, "peak_gib": ctx.peak_gib(), "loss_finite": bool(torch.isfinite(loss).item())})
    return {"ok": all(r["loss_finite"] for r in rows), "input": "x".join(map(str, shape)), "batch": 1,
            "trainable": sum(p.numel() for p in params), "rows": rows}


@check("ddp_smoke")
def ddp_smoke(ctx: Ctx) -> dict:
    """One process through Lightning's DDP strategy, with a q/v-sliced LoRA: the k rows must stay 0."""
    from safetensors.torch import load_file

    from adapt3d.train.run import run_adaptation

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _experiment(ctx, Path(tmp), "train.strategy=ddp", "train.devices=1", "train.epochs=1", "adapter.qkv_slices=qv")
        run = run_adaptation(cfg)
        state = load_file(str(run / "adapter" / "adapter_model.safetensors"))
        steps = json.loads((run / "metrics.json").read_text())["training"]["steps"]
    rank = cfg.adapter.rank
    worst = 0.0
    for key, b in state.items():
        if "attn.qkv.lora_B" in key:
            d = b.shape[0] // 3
            worst = max(worst, b[d : 2 * d].abs().max().item(), b[:d, rank:].abs().max().item(), b[2 * d :, :rank].abs().max().item())
    return {"ok": steps > 0 and worst == 0.0, "steps": steps, "k_slice_max_abs": worst,
            "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None}


def run_checks(device: str, quick: bool, out: Path, only: set[str] | None = None) -> dict:
    """Run the checks (all, or ``only``), rewriting ``out`` after each; returns the report."""
    from adapt3d.atomic import atomic_file

    ctx = Ctx(device, quick)
    report = {"device": device_name(ctx.device), "quick": quick, "torch": torch.__version__,
              "weights": "random (no pretrained weights)", "checks": []}
    for name, fn in CHECKS:
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        try:
            entry = {"name": name, **fn(ctx)}
        except Exception as exc:  # one failing check must not lose the others
            entry = {"name": name, "ok": False, "error": f"{type(exc).__name__}: {exc}",
                     "traceback": traceback.format_exc(limit=8)}
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        entry["ok"] = bool(entry["ok"])
        report["checks"].append(entry)
        print(f"{name}: {'ok' if entry['ok'] else 'FAILED'} ({entry['seconds']} s)", flush=True)
        ctx.reset_peak()
        with atomic_file(out) as tmp:
            tmp.write_text(json.dumps(report, indent=1, default=str))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, required=True, help="JSON report (rewritten after every check)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, same code paths (CI)")
    parser.add_argument("--only", default="", help="comma-separated check names: " + ", ".join(n for n, _ in CHECKS))
    args = parser.parse_args()
    only = {s for s in args.only.split(",") if s}
    unknown = only - {n for n, _ in CHECKS}
    if unknown:
        parser.error(f"unknown checks: {', '.join(sorted(unknown))}")
    report = run_checks(args.device, args.quick, args.out, only or None)
    failed = [c["name"] for c in report["checks"] if not c["ok"]]
    print(f"{len(report['checks']) - len(failed)}/{len(report['checks'])} checks ok; report: {args.out}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
