"""The protocol's endpoints: parse and check each request, act on the lease's session, answer.

Every endpoint but ``/healthz``, ``/claim``, ``/release`` and ``/capabilities`` needs a live
lease; requests of one lease run one at a time (its lock), and predictions of all leases go
through the single :class:`~adapt3d.serve.worker.InferenceWorker`. Bad input is answered 4xx with
``{"detail": "..."}`` and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request
from nnInteractive.inference.remote import _protocol as wire
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from adapt3d.data.imageio import Volume
from adapt3d.errors import ConfigError
from adapt3d.serve.auto import AUTO_PATH
from adapt3d.serve.geometry import check_orientation, orientation_affine
from adapt3d.serve.interactive import (
    InteractiveState,
    Result,
    changed_region,
    mask_to_click,
)
from adapt3d.serve.model import PROMPT_NOTES, ServedModel
from adapt3d.serve.protocol import (
    TARGET_DTYPES,
    ProtocolError,
    box_field,
    flag,
    json_response,
    numbers,
    prediction_response,
    read_array,
    read_json,
)
from adapt3d.serve.sessions import LeaseRegistry
from adapt3d.serve.worker import InferenceWorker

Handler = Callable[[InteractiveState, "Call"], "Response | dict"]  # a session endpoint's body


@dataclass
class Call:
    """One request as the handlers see it: the ``X-Meta`` object, the JSON body and the raw body."""

    meta: dict
    payload: dict
    body: bytes


class Routes:
    """Binds the endpoints to a served model, its worker and the lease registry."""

    def __init__(
        self,
        served: ServedModel,
        worker: InferenceWorker,
        registry: LeaseRegistry,
        *,
        max_image_bytes: int,
        array_orientation: str = "SAR",
    ) -> None:
        self.served, self.worker, self.registry = served, worker, registry
        self.max_image_bytes = max_image_bytes
        self.array_orientation = check_orientation(array_orientation)

    def register(self, app: FastAPI) -> None:
        """Add every endpoint of the protocol to ``app``."""
        add = app.add_api_route
        add(wire.PATH_HEALTHZ, self._healthz, methods=["GET"])
        add(wire.PATH_CAPABILITIES, self._capabilities, methods=["GET"])
        add(wire.PATH_CLAIM, self._claim, methods=["POST"])
        add(wire.PATH_RELEASE, self._release, methods=["POST"])
        add(wire.PATH_HEARTBEAT, self._heartbeat, methods=["POST"])
        add(wire.PATH_LEASE_STATUS, self._lease_status, methods=["GET"])
        binary = {wire.PATH_SET_IMAGE, wire.PATH_ADD_SCRIBBLE, wire.PATH_ADD_LASSO, wire.PATH_ADD_INITIAL_SEG}
        for path, handler in (
            (wire.PATH_SET_IMAGE, self.set_image),
            (wire.PATH_SET_TARGET_BUFFER, self.set_target_buffer),
            (wire.PATH_SET_DO_AUTOZOOM, self.set_do_autozoom),
            (wire.PATH_RESET_INTERACTIONS, self.reset_interactions),
            (wire.PATH_UNDO, self.undo),
            (wire.PATH_PREDICT, self.predict),
            (wire.PATH_ADD_POINT, self.add_point),
            (wire.PATH_ADD_BBOX, self.add_bbox),
            (wire.PATH_ADD_SCRIBBLE, self.add_scribble),
            (wire.PATH_ADD_LASSO, self.add_lasso),
            (wire.PATH_ADD_INITIAL_SEG, self.add_initial_seg),
            (AUTO_PATH, self.auto_segment),
        ):
            add(path, self._session_endpoint(handler, binary=path in binary), methods=["POST"])

    # -- endpoints without a session -------------------------------------------------------
    async def _healthz(self) -> dict:
        return {"ok": True}

    async def _capabilities(self) -> dict:
        return self.served.capabilities()

    async def _claim(self) -> Response:
        try:
            lease = self.registry.claim()
        except ProtocolError as exc:
            return json_response({"detail": exc.detail}, exc.status, {"Retry-After": "10"})
        return json_response({
            "lease_token": lease.token,
            "idle_timeout_seconds": self.registry.idle_timeout,
            "liveness_timeout_seconds": self.registry.liveness_timeout,
            "max_sessions": self.registry.max_sessions,
        })

    async def _release(self, request: Request) -> dict:
        return {"released": self.registry.release(request.headers.get(wire.LEASE_HEADER))}

    async def _heartbeat(self, request: Request) -> dict:
        lease = self.registry.get(request.headers.get(wire.LEASE_HEADER), active=False)
        return {"remaining_seconds": self.registry.remaining(lease)}

    async def _lease_status(self, request: Request) -> dict:
        lease = self.registry.peek(request.headers.get(wire.LEASE_HEADER))
        return {"remaining_seconds": self.registry.remaining(lease), "idle_timeout_seconds": self.registry.idle_timeout}

    def _session_endpoint(self, handler: Handler, *, binary: bool):
        async def endpoint(request: Request) -> Response:
            token = request.headers.get(wire.LEASE_HEADER)
            body = await request.body()

            def work():
                lease = self.registry.get(token, active=True)
                call = Call(read_json(request.headers.get(wire.META_HEADER), wire.META_HEADER), {}, body)
                if not binary:
                    call.payload = read_json(body, "request body")
                with lease.lock:
                    out = handler(lease.state, call)
                return out if isinstance(out, Response) else json_response(out)

            return await run_in_threadpool(work)

        endpoint.__name__ = handler.__name__
        return endpoint

    # -- session endpoints -------------------------------------------------------------------
    def set_image(self, state: InteractiveState, call: Call) -> dict:
        props = call.meta.get("image_properties") or {}
        if not isinstance(props, dict):
            raise ProtocolError(400, "image_properties must be a JSON object")
        array = read_array(call.body, "image", ndim=4, max_bytes=self.max_image_bytes)
        if array.shape[0] != 1:
            raise ProtocolError(400, f"image: the core takes 1 channel, got {array.shape[0]} (shape {list(array.shape)})")
        if min(array.shape[1:]) < 2:
            raise ProtocolError(400, f"image: spatial shape {list(array.shape[1:])} is not a 3D volume")
        data = np.asarray(array[0], dtype=np.float32)
        if not np.isfinite(data).all():
            raise ProtocolError(400, "image: holds NaN or infinite values")
        volume = Volume(data, self._affine(props))
        try:
            modality = self.served.modality_of(volume, props.get("modality"))
            adapter = self.served.adapter_for(modality, props.get("adapter"))
        except ConfigError as exc:
            raise ProtocolError(400, f"image_properties: {exc}") from None
        prepared = self.served.predictor.prepare(volume, modality)
        state.set_image(volume, prepared, modality, adapter)
        return {"original_image_shape": list(array.shape), "modality": modality, "adapter": adapter}

    def _affine(self, props: dict) -> np.ndarray:
        if "affine" in props:
            rows = props["affine"]
            if not isinstance(rows, list) or len(rows) != 4:
                raise ProtocolError(400, "image_properties.affine must be a 4x4 matrix")
            affine = np.array([numbers(row, "image_properties.affine", 4) for row in rows])
            if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
                raise ProtocolError(400, "image_properties.affine is singular")
            return affine
        spacing = numbers(props.get("spacing", [1.0, 1.0, 1.0]), "image_properties.spacing", 3)
        if min(spacing) <= 0:
            raise ProtocolError(400, f"image_properties.spacing must be positive, got {spacing}")
        try:
            return orientation_affine(spacing, props.get("orientation", self.array_orientation))
        except ConfigError as exc:
            raise ProtocolError(400, f"image_properties: {exc}") from None

    def set_target_buffer(self, state: InteractiveState, call: Call) -> dict:
        image = _image(state)
        shape, dtype = call.payload.get("shape"), call.payload.get("dtype")
        if shape != list(image.shape):
            raise ProtocolError(400, f"target buffer shape {shape!r} must be the image's spatial shape {list(image.shape)}")
        if dtype not in TARGET_DTYPES:
            raise ProtocolError(400, f"target buffer dtype {dtype!r} not accepted; one of {', '.join(sorted(TARGET_DTYPES))}")
        state.target = (tuple(shape), np.dtype(dtype))
        return {}

    def set_do_autozoom(self, state: InteractiveState, call: Call) -> dict:
        state.do_autozoom = flag(call.payload, "do_autozoom")  # windows grow by the whole-volume rule regardless
        return {}

    def reset_interactions(self, state: InteractiveState, call: Call) -> dict:
        state.reset()
        return {}

    def undo(self, state: InteractiveState, call: Call) -> Response:
        previous = state.undo()
        return prediction_response(False) if previous is None else self._answer(state, previous)

    def predict(self, state: InteractiveState, call: Call) -> Response:
        _image(state)
        flag(call.payload, "force_full_refine", False)  # every prediction reruns all clicks anyway
        return self._predict(state) if state.pending else prediction_response(False)

    def add_point(self, state: InteractiveState, call: Call) -> Response:
        image = _image(state)
        point = numbers(call.payload.get("coordinates"), "coordinates", 3)
        if any(not 0 <= c <= n - 1 for c, n in zip(point, image.shape)):
            raise ProtocolError(400, f"coordinates {point} lie outside the image of shape {list(image.shape)}")
        return self._add(state, point, call.payload)

    def add_bbox(self, state: InteractiveState, call: Call) -> Response:
        raise ProtocolError(400, f"bounding boxes are {PROMPT_NOTES['bbox2d']}; use point clicks")

    def add_scribble(self, state: InteractiveState, call: Call) -> Response:
        return self._add_drawn(state, call, "scribble")

    def add_lasso(self, state: InteractiveState, call: Call) -> Response:
        return self._add_drawn(state, call, "lasso")

    def add_initial_seg(self, state: InteractiveState, call: Call) -> Response:
        image = _image(state)
        seg = read_array(call.body, "initial segmentation", ndim=3, max_bytes=self.max_image_bytes)
        if seg.shape != image.shape:
            raise ProtocolError(400, f"initial segmentation: shape {list(seg.shape)} is not the image's {list(image.shape)}")
        state.set_mask(Result.from_values(tuple(slice(0, n) for n in seg.shape), (seg > 0).astype(np.float32)))
        if flag(call.meta, "run_prediction", False) and state.result.box is not None:
            point = mask_to_click(state.result.mask, [b.start for b in state.result.box], image.spacing)
            state.clicks.append((point, 1))
            state.pending = True
            return self._predict(state)  # repaints from the seeded mask the client holds
        return prediction_response(False)

    def auto_segment(self, state: InteractiveState, call: Call) -> Response:
        """The automatic mask of ``{"class": NAME}`` becomes the current result; later clicks refine it."""
        _image(state)
        name = call.payload.get("class")
        if not isinstance(name, str) or not name:
            raise ProtocolError(400, 'automatic segmentation: the body must be {"class": NAME}')
        prompts = self.served.class_prompts.get(state.adapter)
        if prompts is None:
            raise ProtocolError(400, f"automatic segmentation: the session's model ({state.adapter or 'the core without adapter'}) "
                                     "has no class prompts (an adapter trained with auto.enabled: true)")
        if name not in prompts.class_names:
            raise ProtocolError(400, f"automatic segmentation: no class prompt for {name!r}; classes: {', '.join(prompts.class_names)}")
        previous = state.result
        start, result = self.worker.automatic(state, name)
        state.set_auto(start, result)
        return self._answer(state, previous)

    # -- helpers ---------------------------------------------------------------------------
    def _add_drawn(self, state: InteractiveState, call: Call, kind: str) -> Response:
        image = _image(state)
        where = call.meta.get("interaction_bbox")
        box = [[0, n] for n in image.shape] if where is None else box_field(where, "interaction_bbox", image.shape)
        mask = read_array(call.body, kind, ndim=3, max_bytes=self.max_image_bytes)
        if list(mask.shape) != [hi - lo for lo, hi in box]:
            raise ProtocolError(400, f"{kind}: shape {list(mask.shape)} does not match interaction_bbox {box}")
        if not np.any(mask):
            raise ProtocolError(400, f"{kind}: the drawn region is empty")
        point = mask_to_click(mask, [lo for lo, _ in box], image.spacing)
        return self._add(state, point, call.meta)

    def _add(self, state: InteractiveState, point, fields: dict) -> Response:
        positive = flag(fields, "include_interaction")
        run = flag(fields, "run_prediction", True)
        state.add_click(point, positive)
        return self._predict(state) if run else prediction_response(False)

    def _predict(self, state: InteractiveState) -> Response:
        previous = state.result
        state.result = self.worker.segment(state)
        state.pending = False
        return self._answer(state, previous)

    def _answer(self, state: InteractiveState, previous: Result) -> Response:
        """The prediction response repainting what changed from ``previous`` to the current result."""
        if state.target is None:
            return prediction_response(True)
        region = changed_region(previous, state.result, state.target[1])
        return prediction_response(True) if region is None else prediction_response(True, *region)


def _image(state: InteractiveState) -> Volume:
    if state.image is None:
        raise ProtocolError(400, "no image in this session: call set_image first")
    return state.image
