"""Click-to-mask latency of ``adapt3d serve`` seen by the real nninteractive-client.

An in-process server on a loopback port hosts the full-size SAM-Med3D architecture
(``adapt3d.load_core("sam-med3d")``, random weights: no pretrained weights here) wrapped as in
``benchmarks/whole_volume.py`` (``--core oracle``): encoder and decoder run on every window at
their real cost, but the window's mask is an intensity threshold at its click, so the object
(a 40 mm-radius sphere, 300 HU in 40 HU) is covered by one window as a trained model would cover
it. The volume is 256³ voxels (``--spacing``, default 1 mm, resampled to the core's 1.5 mm).

Each client sets the image once, then per round: ``reset_interactions``, a *first* click at a
voxel whose window is not encoded yet (the encoder runs), then ``--later`` clicks in that window
(positive and negative, alternating; only the prompt encoder and decoder run). Latency is the
wall time of ``add_point_interaction`` in the client: request, prediction, packed diff, paste into
the target buffer; the process CPU time of each click is printed too (less sensitive to other
processes on a shared machine than wall time). With ``--clients 4`` the clients click at the same time and predictions queue
on the server's one inference worker.

    python benchmarks/serve_latency.py                      # 1 and 4 clients, CPU
    python benchmarks/serve_latency.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import uvicorn
from nnInteractive.inference.remote import nnInteractiveRemoteInferenceSession
from whole_volume import TimedCore  # benchmarks/whole_volume.py (this script's folder is on sys.path)

from adapt3d import load_core
from adapt3d.infer.whole_volume import WholeVolumeConfig, WholeVolumePredictor
from adapt3d.serve import ServedModel, ServeSettings, make_app


def sphere_ct(n: int, spacing: float, radius_mm: float = 40.0) -> np.ndarray:
    """(1, n, n, n) float32: 40 HU with a 300 HU sphere of ``radius_mm`` at the centre."""
    r = (np.arange(n, dtype=np.float32) - n / 2) * spacing
    inside = r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2 <= radius_mm**2
    return np.where(inside, np.float32(300), np.float32(40))[None]


def start(served: ServedModel, clients: int):
    """The app on a free loopback port: (url, uvicorn server, thread)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(make_app(served, ServeSettings(max_sessions=clients)), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread


def client_run(url: str, image: np.ndarray, spacing: float, rounds: int, later: int, seed: int) -> dict:
    """One client's latencies (s): set_image, first clicks, later clicks."""
    n = image.shape[1]
    out = {"set_image": [], "first": [], "later": [], "first_cpu": [], "later_cpu": []}
    with nnInteractiveRemoteInferenceSession(url, read_timeout=600) as session:
        t = time.perf_counter()
        session.set_image(image, {"spacing": [spacing] * 3})
        buffer = np.zeros(image.shape[1:], np.uint8)
        session.set_target_buffer(buffer)
        out["set_image"].append(time.perf_counter() - t)
        rng = np.random.default_rng(seed)
        for r in range(rounds):
            session.reset_interactions()
            first = [n // 2 + 2 * r + seed, n // 2 - r, n // 2 + r]  # a new window each round
            t, cpu = time.perf_counter(), time.process_time()
            session.add_point_interaction(first, include_interaction=True)
            out["first"].append(time.perf_counter() - t)
            out["first_cpu"].append(time.process_time() - cpu)
            for c in range(later):
                point = [int(v) for v in np.asarray(first) + rng.integers(-15, 16, 3)]
                t, cpu = time.perf_counter(), time.process_time()
                session.add_point_interaction(point, include_interaction=c % 2 == 0)
                out["later"].append(time.perf_counter() - t)
                out["later_cpu"].append(time.process_time() - cpu)
        out["mask_voxels"] = int(buffer.sum())
    return out


def summary(values: list[float]) -> dict:
    a = np.asarray(values)
    return {"n": int(a.size), "p50_s": round(float(np.percentile(a, 50)), 3), "p95_s": round(float(np.percentile(a, 95)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--spacing", type=float, default=1.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--later", type=int, default=8)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    core = TimedCore(load_core("sam-med3d").eval().to(device), oracle=True)
    served = ServedModel(core, WholeVolumePredictor(core, WholeVolumeConfig()), {}, None, "CT",
                         {"name": "sam-med3d (random weights, oracle masks)", "license": "n/a"})
    image = sphere_ct(args.size, args.spacing)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} torch threads)",
        "core": "full-size SAM-Med3D architecture, random weights, oracle masks (see docstring)",
        "volume": f"{args.size}^3 at {args.spacing:g} mm (working grid 1.5 mm)",
        "runs": {},
    }
    for clients in args.clients:
        url, server, thread = start(served, clients)
        before = dict(core.seconds)
        with ThreadPoolExecutor(clients) as pool:
            jobs = [pool.submit(client_run, url, image, args.spacing, args.rounds, args.later, k) for k in range(clients)]
            results = [j.result() for j in jobs]
        server.should_exit = True
        thread.join()
        merged = {key: sum((r[key] for r in results), []) for key in results[0] if key != "mask_voxels"}
        report["runs"][f"{clients} client(s)"] = {
            "first_click": summary(merged["first"]),
            "later_clicks": summary(merged["later"]),
            # CPU seconds the whole process (client + server, all threads) spent during a click;
            # with several clients it includes the others' work, so it is meaningful for 1 client
            "first_click_process_cpu": summary(merged["first_cpu"]),
            "later_click_process_cpu": summary(merged["later_cpu"]),
            "set_image": summary(merged["set_image"]),
            "encoder_s_total": round(core.seconds["encode"] - before["encode"], 1),
            "decoder_s_total": round(core.seconds["decode"] - before["decode"], 1),
            "mask_voxels": [r["mask_voxels"] for r in results],
        }
    report["torch"] = torch.__version__
    report["load_average_1_5_15"] = [round(v, 1) for v in os.getloadavg()]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
