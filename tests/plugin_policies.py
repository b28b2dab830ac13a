"""Plug-in policies for the tests, written against the plug-in interface only (policies.base).

``TargetFlowPolicy`` is a flow plug-in whose velocity is the exact flow to one chunk,
``v = (target - x) / (1 - tau)``: Euler integration lands on ``target`` from any noise, and
``x + (1 - tau) v = target`` does not depend on ``x``, so real-time chunking's guidance
(a vector-Jacobian product through that estimate) is zero. Its chunks are therefore a known
function of the observation (:func:`expected_chunk`), whatever the noise, the batch and the
guide: what the serving tests check every chunk against. The target reads every declared
key (each state key, each image's mean, the prompt's length), so a key routed to the wrong
place, a batch returned in another order or an image transposed wrongly changes it.

The factories (``libero``, ``droid``, ``aloha``) declare the observation layouts of openpi's
example clients; ``headway serve --policy plugin_policies:libero`` serves one (the tests
run the server with the tests folder on the path).
"""

from __future__ import annotations

import numpy as np
import torch

from chunking.future_state import last_commanded_position
from policies.base import ImageInput, ImageMapInput, PolicySpec, TextInput, VectorInput

H = 10


def _image_term(image: np.ndarray) -> float:
    """A number that changes when the image's rows, columns or channels are swapped."""
    image = np.asarray(image, dtype=np.float64)
    h, w, _ = image.shape
    weights = (np.arange(h)[:, None, None] + 2 * np.arange(w)[None, :, None] + 3 * np.arange(3)[None, None, :])
    return float((image * weights).sum() / (255.0 * weights.sum()))


def expected_chunk(observation: dict, spec: PolicySpec) -> np.ndarray:
    """The chunk ``[H, A]`` a :class:`TargetFlowPolicy` returns for ``observation`` (numpy,
    images ``[H, W, 3]``): row i, column a = state[a % S] * (i + 1) / H + image terms + prompt term."""
    state = np.concatenate([np.asarray(observation[k], np.float64) for k in spec.state_keys])
    offset = 0.0
    for scale, (key, kind) in enumerate(sorted(spec.inputs.items()), start=1):
        if isinstance(kind, ImageInput):
            offset += scale * _image_term(observation[key])
        elif isinstance(kind, ImageMapInput):
            offset += scale * sum(_image_term(observation[key][c]) * (j + 1) for j, c in enumerate(kind.cameras))
        elif isinstance(kind, TextInput):
            offset += scale * len(observation.get(key) or "") / 100.0
    rows = np.arange(1, spec.horizon + 1)[:, None] / spec.horizon
    columns = state[np.arange(spec.action_dim) % len(state)][None, :]
    return (columns * rows + offset).astype(np.float32)


class TargetFlowPolicy:
    """A flow plug-in that always flows to :func:`expected_chunk` (see the module docstring)."""

    def __init__(self, spec: PolicySpec, future_state=None) -> None:
        self.spec = spec
        self.future_state = future_state
        self.action_scale = 2.0  # normalised = robot / 2: the normalisation is not the identity

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return actions / self.action_scale

    def unnormalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return actions * self.action_scale

    def encode(self, observation: dict) -> torch.Tensor:
        batch = len(next(iter(v for v in observation.values() if not isinstance(v, dict))))
        chunks = []
        for i in range(batch):
            item = {}
            for key, value in observation.items():
                if isinstance(value, dict):
                    item[key] = {c: v[i].numpy() for c, v in value.items()}
                elif isinstance(value, list):
                    item[key] = value[i]
                else:
                    item[key] = value[i].numpy()
            chunks.append(expected_chunk(item, self.spec))
        return self.normalize_actions(torch.from_numpy(np.stack(chunks)))

    def velocity(self, x: torch.Tensor, tau: torch.Tensor, conditioning: torch.Tensor) -> torch.Tensor:
        return (conditioning - x) / (1.0 - tau).reshape(-1, 1, 1)


def libero(control_hz: float = 10.0, num_steps: int = 5) -> TargetFlowPolicy:
    """openpi's LIBERO example: ``observation/state`` (8), two 224 x 224 images, a prompt; 7 actions."""
    spec = PolicySpec("flow", horizon=H, action_dim=7, control_hz=control_hz, num_steps=num_steps, name="libero",
                      inputs={"observation/state": VectorInput(8), "observation/image": ImageInput(224, 224),
                              "observation/wrist_image": ImageInput(224, 224), "prompt": TextInput()},
                      state_keys=("observation/state",))
    return TargetFlowPolicy(spec, last_commanded_position(range(7)))


def droid(control_hz: float = 15.0, num_steps: int = 5) -> TargetFlowPolicy:
    """openpi's DROID example: joint (7) and gripper (1) positions, two 224 x 224 images, a
    prompt; 8 absolute joint + gripper targets, so the future state is the last of them."""
    spec = PolicySpec("flow", horizon=H, action_dim=8, control_hz=control_hz, num_steps=num_steps, name="droid",
                      inputs={"observation/joint_position": VectorInput(7),
                              "observation/gripper_position": VectorInput(1),
                              "observation/exterior_image_1_left": ImageInput(224, 224),
                              "observation/wrist_image_left": ImageInput(224, 224), "prompt": TextInput()},
                      state_keys=("observation/joint_position", "observation/gripper_position"))
    return TargetFlowPolicy(spec, last_commanded_position(range(8)))


def aloha(control_hz: float = 50.0, num_steps: int = 5) -> TargetFlowPolicy:
    """openpi's ALOHA example: ``state`` (14) and ``images``, a map of camera -> [3, 224, 224]."""
    spec = PolicySpec("flow", horizon=H, action_dim=14, control_hz=control_hz, num_steps=num_steps, name="aloha",
                      inputs={"state": VectorInput(14),
                              "images": ImageMapInput(("cam_high", "cam_left_wrist", "cam_right_wrist"), 224, 224),
                              "prompt": TextInput()},
                      state_keys=("state",))
    return TargetFlowPolicy(spec)
