"""``adapt3d serve`` offering automatic segmentation (class prompts) as a session's starting result,
driven by the real ``nninteractive-client``; every mask is compared voxel for voxel with what
``adapt3d predict --auto`` (and ``--refine``) writes for the same image and clicks."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from nnInteractive.inference.remote import nnInteractiveRemoteInferenceSession
from tiny import SAMPLE_DATA, serving

from adapt3d import load_core
from adapt3d.auto.prompts import ClassPrompts, save_class_prompts
from adapt3d.cli import main
from adapt3d.data.imageio import load_volume
from adapt3d.serve import AdapterSpec, ServedModel, ServeSettings, make_app
from adapt3d.serve.auto import AUTO_PATH

DEMO_CORE = SAMPLE_DATA / "demo_core" / "demo_core.safetensors"
MRI_ADAPTER = Path(__file__).resolve().parents[1] / "adapters" / "demo-mri-lora"
MR = SAMPLE_DATA / "Dataset002_TotalSegExampleMR" / "imagesTr" / "ts_mr_sm_0000.nii.gz"  # LPS, 3 mm
KEY = "test-key-not-secret"


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """The shipped MRI adapter with (untrained, seeded) class prompts for two classes beside it."""
    directory = tmp_path_factory.mktemp("adapter") / "mri-auto"
    shutil.copytree(MRI_ADAPTER, directory)
    core = load_core("sam-med3d", DEMO_CORE)
    save_class_prompts(ClassPrompts.for_core(core, ["liver", "spleen"], [5, 1], 1, seed=3), directory)
    return directory


@pytest.fixture(scope="module")
def server(adapter):
    served = ServedModel.load(DEMO_CORE, [AdapterSpec(adapter, "MR")])
    app = make_app(served, ServeSettings(api_key=KEY, max_sessions=2, max_upload_bytes=8 << 20))
    with serving(app) as url:
        yield SimpleNamespace(url=url)


def predict_auto(adapter, out: Path, *extra: str) -> np.ndarray:
    """The liver mask ``adapt3d predict --auto --classes liver`` writes (label value 5)."""
    args = ["predict", "--auto", "--core", str(DEMO_CORE), "--adapter", str(adapter), "--image", str(MR),
            "--classes", "liver", "--out", str(out), *extra]
    assert main(args) == 0
    return (load_volume(out, kind="label").array == 5).astype(np.uint8)


def open_mr(session) -> np.ndarray:
    mr = load_volume(MR)
    session.set_image(mr.array[None], {"spacing": list(mr.spacing), "affine": mr.affine, "modality": "MR"})
    buffer = np.zeros(mr.shape, np.uint8)
    session.set_target_buffer(buffer)
    return buffer


def auto_segment(session, name: str) -> httpx.Response:
    response = session._post_json(AUTO_PATH, {"class": name})  # the client's own transport, lease and repaint
    session._apply_prediction_response(response)
    return response


def test_the_automatic_mask_starts_a_session_and_clicks_refine_it(server, adapter, tmp_path):
    auto = predict_auto(adapter, tmp_path / "auto.nii.gz")
    assert 0 < auto.sum() < auto.size  # the seeded prompt labels part of the image: a meaningful comparison
    inside = tuple(int(v) for v in np.argwhere(auto)[len(np.argwhere(auto)) // 2])
    refined = predict_auto(adapter, tmp_path / "refined.nii.gz", "--refine", "liver", "--negative", ",".join(map(str, inside)))
    assert not np.array_equal(refined, auto)
    with nnInteractiveRemoteInferenceSession(server.url, api_key=KEY) as session:
        caps = session._get_json("/capabilities")["automatic"]
        assert caps == {"endpoint": AUTO_PATH, "classes": {"mri-auto": ["liver", "spleen"]}}
        buffer = open_mr(session)
        auto_segment(session, "liver")
        assert np.array_equal(buffer, auto)
        session.add_point_interaction(list(inside), include_interaction=False)  # a negative click alone refines it
        assert np.array_equal(buffer, refined)
        assert session.undo() is True and np.array_equal(buffer, auto)
        assert session.undo() is True and buffer.sum() == 0
        auto_segment(session, "liver")
        session.reset_interactions()  # the automatic start is gone: a negative click alone does nothing
        session.add_point_interaction(list(inside), include_interaction=False)
        assert buffer.sum() == 0


def test_automatic_requests_that_cannot_be_served_are_refused(server):
    with nnInteractiveRemoteInferenceSession(server.url, api_key=KEY) as session:
        with pytest.raises(httpx.HTTPStatusError) as refused:
            session._post_json(AUTO_PATH, {"class": "liver"})
        assert "set_image" in refused.value.response.json()["detail"]
        open_mr(session)
        for body, match in (({"class": "kidney"}, "no class prompt for 'kidney'; classes: liver, spleen"),
                            ({"klass": "liver"}, 'must be {"class": NAME}')):
            with pytest.raises(httpx.HTTPStatusError) as refused:
                session._post_json(AUTO_PATH, body)
            assert refused.value.response.status_code == 400 and match in refused.value.response.json()["detail"]
        mr = load_volume(MR)
        session.set_image(mr.array[None], {"affine": mr.affine, "adapter": "none"})  # the core has no prompts
        with pytest.raises(httpx.HTTPStatusError) as refused:
            session._post_json(AUTO_PATH, {"class": "liver"})
        assert "has no class prompts" in refused.value.response.json()["detail"]
        session.add_point_interaction([23, 44, 13], include_interaction=True)  # the session still works
