"""A policy of your own, served by Headway (docs/own-policy.md). Copy this file, put your
network and its statistics in, and serve it from the folder that holds it:

    headway serve --policy my_policy:make_policy --policy-arg checkpoint=my_weights.safetensors

It is a flow-matching policy for openpi's LIBERO observations (``--policy-arg layout=droid``:
DROID's). Headway calls ``encode`` once per batched call and ``velocity`` once per denoising
step; it runs the sampling loop itself, and with it real-time chunking (guidance through
``velocity``), future state (``future_state``), fewer steps when a request must degrade,
batching across robots and the metrics. Without a checkpoint the network is randomly
initialised: it serves chunks, but not good ones.
"""

from __future__ import annotations

import zlib

import torch
from torch import nn

from chunking.future_state import last_commanded_position, rollout_with
from policies.base import ImageInput, PolicySpec, TextInput, VectorInput

# What each layout's client sends (openpi's examples/libero and examples/droid), and the
# size of its state and actions.
LAYOUTS = {
    "libero": {"inputs": {"observation/state": VectorInput(8),  # end effector xyz, axis-angle, gripper (2)
                          "observation/image": ImageInput(224, 224),
                          "observation/wrist_image": ImageInput(224, 224),
                          "prompt": TextInput()},
               "state_keys": ("observation/state",), "action_dim": 7, "control_hz": 10.0},
    "droid": {"inputs": {"observation/joint_position": VectorInput(7),
                         "observation/gripper_position": VectorInput(1),
                         "observation/exterior_image_1_left": ImageInput(224, 224),
                         "observation/wrist_image_left": ImageInput(224, 224),
                         "prompt": TextInput()},
              "state_keys": ("observation/joint_position", "observation/gripper_position"), "action_dim": 8,
              "control_hz": 15.0},
}
IMAGE_FEATURES, PROMPT_FEATURES, WORDS = 32, 16, 4096


class ImageEncoder(nn.Module):
    """uint8 [B, 224, 224, 3] -> [B, IMAGE_FEATURES]: average-pooled to 14 x 14, one linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(16)
        self.linear = nn.Linear(3 * 14 * 14, IMAGE_FEATURES)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        return torch.tanh(self.linear(self.pool(x).flatten(1)))


class MyPolicy(nn.Module):
    """The plug-in: ``spec``, action normalisation, ``encode``, ``velocity``, ``future_state``."""

    def __init__(self, layout: str = "libero", horizon: int = 10, num_steps: int = 10, hidden: int = 256) -> None:
        super().__init__()
        chosen = LAYOUTS[layout]
        self.spec = PolicySpec(
            family="flow", horizon=horizon, action_dim=chosen["action_dim"], control_hz=chosen["control_hz"],
            inputs=chosen["inputs"], state_keys=chosen["state_keys"], num_steps=num_steps,
            action_clip=5.0,  # normalised actions beyond 5 standard deviations never occur in the data
            name=f"my_policy_{layout}")
        self.cameras = [key for key, kind in self.spec.inputs.items() if isinstance(kind, ImageInput)]
        state_dim, action_dim = self.spec.state_dim, self.spec.action_dim
        # Your dataset's statistics (robot units); identity here.
        self.register_buffer("state_mean", torch.zeros(state_dim))
        self.register_buffer("state_std", torch.ones(state_dim))
        self.register_buffer("action_mean", torch.zeros(action_dim))
        self.register_buffer("action_std", torch.ones(action_dim))
        self.images = nn.ModuleDict({camera.replace("/", "_"): ImageEncoder() for camera in self.cameras})
        self.words = nn.EmbeddingBag(WORDS, PROMPT_FEATURES, mode="mean")
        condition = state_dim + IMAGE_FEATURES * len(self.cameras) + PROMPT_FEATURES
        self.net = nn.Sequential(nn.Linear(horizon * action_dim + 1 + condition, hidden), nn.GELU(),
                                 nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, horizon * action_dim))
        if layout == "droid":
            # Absolute joint and gripper targets: the state the robot will be in once the
            # pending actions have run is the last of them (the built-in rollout).
            self.future_state = last_commanded_position(state_index=range(8), action_index=range(8))
        else:
            # LIBERO's actions move the end effector by a delta: your own one-tick dynamics.
            self.future_state = rollout_with(self.one_tick)

    @staticmethod
    def one_tick(state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """LIBERO's end effector after one action (position and rotation deltas, scaled as the
        robot's controller scales them): the future-state hook for a robot's own dynamics."""
        moved = state.clone()
        moved[:, :6] = state[:, :6] + 0.05 * action[:, :6].clamp(-1.0, 1.0)
        return moved

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return (actions - self.action_mean) / self.action_std

    def unnormalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return actions * self.action_std + self.action_mean

    def encode(self, observation: dict) -> torch.Tensor:
        """Once per batch: the normalised state, both cameras' features, the prompt's words."""
        state = torch.cat([observation[key] for key in self.spec.state_keys], dim=1)
        features = [(state - self.state_mean) / self.state_std]
        features += [self.images[camera.replace("/", "_")](observation[camera]) for camera in self.cameras]
        words = [[zlib.crc32(word.encode()) % WORDS for word in (prompt or "").lower().split()] or [0]
                 for prompt in observation["prompt"]]
        offsets = torch.tensor([0] + [len(w) for w in words[:-1]]).cumsum(0)
        features.append(self.words(torch.tensor([i for w in words for i in w]), offsets))
        return torch.cat(features, dim=1)

    def velocity(self, x: torch.Tensor, tau: torch.Tensor, conditioning: torch.Tensor) -> torch.Tensor:
        """One denoising step: the velocity at the noisy chunk ``x`` ([B, H, A], normalised) and
        flow time ``tau`` ([B]: 0 = noise, 1 = data). Differentiable in ``x``."""
        inputs = torch.cat([x.flatten(1), tau[:, None], conditioning], dim=1)
        return self.net(inputs).reshape(x.shape)


def make_policy(layout: str = "libero", checkpoint: str | None = None, horizon: int = 10,
                num_steps: int = 10) -> MyPolicy:
    """``headway serve --policy my_policy:make_policy [--policy-arg K=V ...]`` calls this with
    each ``K=V`` as a keyword argument. ``checkpoint``: a safetensors file of ``state_dict()``."""
    torch.manual_seed(0)
    policy = MyPolicy(layout, horizon, num_steps)
    if checkpoint is not None:
        from safetensors.torch import load_file

        policy.load_state_dict(load_file(checkpoint))
    return policy.eval().requires_grad_(False)
