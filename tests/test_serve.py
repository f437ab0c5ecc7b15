"""``adapt3d serve`` driven by the real ``nninteractive-client`` (the library 3D Slicer's and
napari's plugins use), on a loopback port, with the shipped demo core and MRI adapter.

Every mask is compared voxel for voxel with what ``adapt3d predict`` writes for the same clicks.
"""

from __future__ import annotations

import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from nnInteractive.inference.remote import ServerAtCapacityError, SessionExpiredError, nnInteractiveRemoteInferenceSession
from nnInteractive.inference.remote.serialization import MAGIC, pack_array
from tiny import SAMPLE_DATA, serving

from adapt3d.cli import main
from adapt3d.data.imageio import load_volume
from adapt3d.data.preprocess import from_working_grid, to_working_grid
from adapt3d.serve import AdapterSpec, ServedModel, ServeSettings, make_app
from adapt3d.serve.geometry import box_to_input
from adapt3d.serve.interactive import mask_to_click, ordered_prompts
from adapt3d.serve.sessions import LeaseRegistry

DEMO_CORE = SAMPLE_DATA / "demo_core" / "demo_core.safetensors"
MRI_ADAPTER = Path(__file__).resolve().parents[1] / "adapters" / "demo-mri-lora"
CT = SAMPLE_DATA / "Dataset001_TotalSegExampleCT" / "imagesTr" / "ts_ct_0000.nii.gz"  # RAS, 3 mm
MR = SAMPLE_DATA / "Dataset002_TotalSegExampleMR" / "imagesTr" / "ts_mr_sm_0000.nii.gz"  # LPS, 3 mm
CT_CLICK, CT_NEGATIVE = (86, 43, 74), (90, 43, 80)  # right kidney (3 windows), and a voxel the first click segments
MR_CLICK = (23, 44, 13)  # liver
KEY = "test-key-not-secret"


@pytest.fixture(scope="module")
def server():
    """The demo core (3 mm), MR routed to the shipped MRI adapter, on a free loopback port."""
    served = ServedModel.load(DEMO_CORE, [AdapterSpec(MRI_ADAPTER, "MR")])  # at the core's own 3 mm
    app = make_app(served, ServeSettings(api_key=KEY, max_sessions=3, max_upload_bytes=8 << 20))
    encoder = served.model.core.image_encoder
    calls = []
    hook = encoder.register_forward_hook(lambda *args: calls.append(1))
    with serving(app) as url:
        yield SimpleNamespace(url=url, app=app, encoder_calls=calls)
    hook.remove()


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    """Masks written by ``adapt3d predict`` (demo core at 3 mm) for the clicks the tests make."""
    out = tmp_path_factory.mktemp("predict")

    def run(name: str, image: Path, *extra: str) -> np.ndarray:
        path = out / f"{name}.nii.gz"
        assert main(["predict", "--core", str(DEMO_CORE), "--image", str(image), "--out", str(path), *extra]) == 0
        return load_volume(path, kind="label").array.astype(np.uint8)

    click = lambda p: ",".join(map(str, p))  # noqa: E731
    return {
        "ct": run("ct", CT, "--point", click(CT_CLICK)),
        "ct_neg": run("ct_neg", CT, "--point", click(CT_CLICK), "--negative", click(CT_NEGATIVE)),
        "mr": run("mr", MR, "--point", click(MR_CLICK), "--adapter", str(MRI_ADAPTER)),
    }


def connect(server) -> nnInteractiveRemoteInferenceSession:
    return nnInteractiveRemoteInferenceSession(server.url, api_key=KEY)


def open_ct_as_slicer_does(session) -> np.ndarray:
    """Send the CT as SlicerNNInteractive does: (k, j, i) array order, spacing reversed, no affine."""
    ct = load_volume(CT)
    image = np.ascontiguousarray(ct.array.transpose(2, 1, 0)[None])
    session.set_image(image, {"spacing": list(ct.spacing[::-1])})
    buffer = np.zeros(image.shape[1:], np.uint8)
    session.set_target_buffer(buffer)
    return buffer


def open_mr_with_affine(session, **properties) -> np.ndarray:
    """Send the LPS MR in file order with its affine (adapt3d's image_properties extension)."""
    mr = load_volume(MR)
    session.set_image(mr.array[None], {"spacing": list(mr.spacing), "affine": mr.affine, **properties})
    buffer = np.zeros(mr.shape, np.uint8)
    session.set_target_buffer(buffer)
    return buffer


def kji(point):
    return list(point[::-1])


def test_click_negative_undo_reset_match_adapt3d_predict(server, predicted):
    assert predicted["ct"].sum() > 5000 and not np.array_equal(predicted["ct"], predicted["ct_neg"])
    with connect(server) as session:
        buffer = open_ct_as_slicer_does(session)
        server.encoder_calls.clear()
        changed = session.add_point_interaction(kji(CT_CLICK), include_interaction=True)
        assert np.array_equal(buffer.T, predicted["ct"])  # identical voxels
        first_encodes = len(server.encoder_calls)
        assert first_encodes >= 2  # the kidney needs more than one window
        box = tuple(slice(lo, hi) for lo, hi in changed)
        assert buffer.sum() == buffer[box].sum()  # the changed box holds the whole mask

        session.add_point_interaction(kji(CT_NEGATIVE), include_interaction=False)
        assert np.array_equal(buffer.T, predicted["ct_neg"])
        assert session.undo() is True
        assert np.array_equal(buffer.T, predicted["ct"])  # undo restores the previous result
        assert session.undo() is True and buffer.sum() == 0
        assert session.undo() is False

        session.add_point_interaction(kji(CT_CLICK), include_interaction=True)
        session.reset_interactions()
        assert buffer.sum() == 0
        server.encoder_calls.clear()
        session.add_point_interaction(kji(CT_CLICK), include_interaction=True)
        assert np.array_equal(buffer.T, predicted["ct"])
        assert len(server.encoder_calls) == 0  # every window's embedding came from the session cache


def test_adapter_routed_by_modality_and_affine_respected(server, predicted):
    with connect(server) as session:
        buffer = open_mr_with_affine(session)
        session.add_point_interaction(list(MR_CLICK), include_interaction=True)
        assert np.array_equal(buffer, predicted["mr"])
        buffer = open_mr_with_affine(session, adapter="none")  # the client's choice: the frozen core
        session.add_point_interaction(list(MR_CLICK), include_interaction=True)
        assert buffer.sum() > 0 and not np.array_equal(buffer, predicted["mr"])


def test_two_concurrent_sessions_do_not_disturb_each_other(server, predicted):
    with connect(server) as a, connect(server) as b:
        buf_a, buf_b = open_ct_as_slicer_does(a), open_mr_with_affine(b)

        def session_a():
            a.add_point_interaction(kji(CT_CLICK), include_interaction=True)
            a.add_point_interaction(kji(CT_NEGATIVE), include_interaction=False)

        with ThreadPoolExecutor(2) as pool:
            jobs = [pool.submit(session_a), pool.submit(b.add_point_interaction, list(MR_CLICK), True)]
            for job in jobs:
                job.result()
        assert np.array_equal(buf_a.T, predicted["ct_neg"])
        assert np.array_equal(buf_b, predicted["mr"])
        a.reset_interactions()
        assert b.undo() is True and buf_b.sum() == 0  # b still holds its own history
        b.add_point_interaction(list(MR_CLICK), include_interaction=True)
        assert np.array_equal(buf_b, predicted["mr"])


def test_initial_segmentation_is_kept_as_the_current_mask(server, predicted):
    """napari re-seeds a resumed session with its mask: undo clears it, a click repaints over it."""
    with connect(server) as session:
        buffer = open_ct_as_slicer_does(session)
        seed = np.zeros_like(buffer)
        seed[5:20, 5:30, 5:40] = 1  # far from the kidney
        session.add_initial_seg_interaction(seed)
        assert buffer.sum() == seed.sum()  # the client mirrors the seed itself
        assert session.undo() is True and buffer.sum() == 0  # the server held it: undo repaints its region
        session.add_initial_seg_interaction(seed)
        session.add_point_interaction(kji(CT_CLICK), include_interaction=True)
        assert np.array_equal(buffer.T, predicted["ct"])  # the seed's voxels were repainted too


def test_lasso_becomes_one_click_at_its_centre(server, predicted):
    with connect(server) as session:
        buffer = open_ct_as_slicer_does(session)
        k, j, i = kji(CT_CLICK)
        lasso = np.ones((1, 5, 5), np.uint8)  # drawn on slice k, centred on the click
        session.add_lasso_interaction(lasso, True, interaction_bbox=[[k, k + 1], [j - 2, j + 3], [i - 2, i + 3]])
        assert np.array_equal(buffer.T, predicted["ct"])


def test_boxes_are_refused_honestly(server, predicted):
    with connect(server) as session:
        assert session.supported_interactions["points"] is True
        assert session.supported_interactions["bbox2d"] is False and session.supported_interactions["bbox3d"] is False
        assert session.supports_initial_label is False and session.supports_undo is True
        buffer = open_ct_as_slicer_does(session)
        k, j, i = kji(CT_CLICK)
        with pytest.raises(httpx.HTTPStatusError) as refused:
            session.add_bbox_interaction([[k, k + 1], [j - 5, j + 5], [i - 5, i + 5]], include_interaction=True)
        assert refused.value.response.status_code == 400 and "box" in refused.value.response.json()["detail"]
        session.add_point_interaction([k, j, i], include_interaction=True)  # the session still works
        assert np.array_equal(buffer.T, predicted["ct"])


def test_refusals_answer_4xx_and_the_server_keeps_serving(server):
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.post("/claim").status_code == 401
        assert http.post("/claim", headers={"Authorization": "Bearer wrong"}).status_code == 401
        with pytest.raises(httpx.HTTPStatusError, match="401"):
            nnInteractiveRemoteInferenceSession(server.url, api_key="wrong")
        click = {"coordinates": [1, 2, 3], "include_interaction": True}
        assert http.post("/add_point_interaction", json=click, headers=auth).status_code == 410  # no lease
        stranger = {**auth, "X-Lease-Token": "not-a-lease"}
        assert http.post("/add_point_interaction", json=click, headers=stranger).status_code == 410
        token = http.post("/claim", headers=auth).json()["lease_token"]
        lease = {**auth, "X-Lease-Token": token}
        try:
            def post(path, content=b"", **headers):
                return http.post(path, content=content, headers={**lease, **headers})

            assert post("/add_point_interaction", b'{"coordinates": [1, 2, 3], "include_').status_code == 400
            assert "set_image" in post("/add_point_interaction", b'{"coordinates": [1, 2, 3], "include_interaction": true}').json()["detail"]
            assert post("/set_image", b"garbage bytes that are no array").status_code == 400
            obj = struct.pack("<4sBBBB6s", MAGIC, 1, 1, 4, 6, b"object") + struct.pack("<4q", 1, 2, 2, 2) + b"\0" * 16
            assert "dtype" in post("/set_image", obj).json()["detail"]
            assert "4 axes" in post("/set_image", pack_array(np.zeros((4, 4, 4), np.float32))).json()["detail"]
            assert "1 channel" in post("/set_image", pack_array(np.zeros((2, 4, 4, 4), np.float32))).json()["detail"]
            assert post("/set_image", pack_array(np.zeros((1, 8, 8, 8), np.float32)), **{"X-Meta": "{bad"}).status_code == 400
            assert post("/set_image", np.random.default_rng(0).bytes(9 << 20)).status_code == 413
            assert post("/set_image", pack_array(np.zeros((1, 8, 9, 10), np.float32))).status_code == 200
            assert post("/set_target_buffer", b'{"shape": [8, 9, 11], "dtype": "uint8"}').status_code == 400
            assert post("/set_target_buffer", b'{"shape": [8, 9, 10], "dtype": "complex64"}').status_code == 400
            assert post("/add_point_interaction", b'{"coordinates": [8, 2, 3], "include_interaction": true}').status_code == 400
            assert post("/add_point_interaction", b'{"coordinates": [1, 2], "include_interaction": true}').status_code == 400
            assert post("/add_initial_seg_interaction", pack_array(np.zeros((8, 9, 9), np.uint8))).status_code == 400
            assert post("/add_point_interaction", b'{"coordinates": [4, 4, 4], "include_interaction": true}').status_code == 200
        finally:
            assert http.post("/release", headers=lease).json() == {"released": True}
        assert http.get("/healthz").json() == {"ok": True}
        assert http.post("/heartbeat", headers=lease).status_code == 410  # released leases are gone
    held = [connect(server) for _ in range(3)]
    try:
        with pytest.raises(ServerAtCapacityError):
            connect(server)
        assert server.app.state.registry.release(held[0]._lease_token)  # as the reaper would
        with pytest.raises(SessionExpiredError):
            held[0].lease_status()
    finally:
        for session in held:
            session.close()


def test_leases_are_reaped_when_dead_or_idle():
    now = [0.0]
    registry = LeaseRegistry(max_sessions=2, idle_timeout=10, liveness_timeout=3, clock=lambda: now[0])
    dead, idle = registry.claim(), registry.claim()
    for _ in range(4):  # idle keeps heartbeating, dead says nothing
        now[0] += 2.5
        registry.get(idle.token, active=False)
        registry.sweep()
    assert sorted(registry.sweep()) == [] and len(registry) == 1
    assert registry.remaining(idle) == 0.0  # heartbeats do not postpone the idle timeout
    now[0] += 0.5
    assert registry.sweep() == ["idle"] and len(registry) == 0


@pytest.mark.parametrize("image", [MR, SAMPLE_DATA / "Dataset004_BrainTumourMR" / "imagesTr" / "brain1_0000.nii.gz"])
def test_results_map_back_a_box_at_a_time_as_the_full_resampling(image):
    """LPS 3 mm → 1.5 mm and LAS 0.78×0.78×6.5 mm → 1.5 mm: the box mapping equals from_working_grid."""
    work, grid = to_working_grid(load_volume(image), (1.5, 1.5, 1.5))
    rng = np.random.default_rng(0)
    box = tuple(slice(n // 5, n // 5 + n // 3) for n in work.shape)
    values = rng.random([s.stop - s.start for s in box]).astype(np.float32)
    full = np.zeros(work.shape, np.float32)
    full[box] = values
    reference = from_working_grid(full, grid, order=1)
    where, mapped = box_to_input(values, box, grid)
    mine = np.zeros_like(reference)
    mine[where] = mapped
    assert np.count_nonzero(reference) == np.count_nonzero(reference[where]) > 1000
    assert np.abs(mine - reference).max() < 1e-6


def test_cli_refuses_unsafe_or_incomplete_setups(capsys, monkeypatch):
    assert main(["serve", "--core", str(DEMO_CORE), "--host", "0.0.0.0"]) == 2
    assert "--api-key" in capsys.readouterr().err
    assert main(["serve", "--core", str(DEMO_CORE), "--adapter", "M R=adapters/x"]) == 2
    assert "MODALITY=DIR" in capsys.readouterr().err
    monkeypatch.setitem(__import__("sys").modules, "uvicorn", None)
    assert main(["serve", "--core", str(DEMO_CORE)]) == 2
    assert "pip install 'adapt3d[serve]'" in capsys.readouterr().err


def test_prompt_order_and_the_click_of_a_drawn_region():
    clicks = [((1.0, 1.0, 1.0), 0), ((2.0, 2.0, 2.0), 1), ((3.0, 3.0, 3.0), 0), ((4.0, 4.0, 4.0), 1)]
    assert ordered_prompts(clicks) == ([(2.0,) * 3, (1.0,) * 3, (3.0,) * 3, (4.0,) * 3], [1, 0, 0, 1])
    assert ordered_prompts(clicks[:1]) == ([], [])  # nothing to segment without a positive click
    region = np.zeros((9, 9, 3), bool)
    region[1:8, 2:9, :] = True  # 7 x 7 x 3 voxels: deepest along the thick axis at its middle slice
    assert mask_to_click(region, (10, 20, 30), (1.0, 1.0, 1.0)) == (14.0, 25.0, 31.0)
    assert mask_to_click(region, (0, 0, 0), (1.0, 1.0, 5.0)) == (4.0, 5.0, 1.0)
