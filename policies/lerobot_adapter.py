"""LeRobot policies as Headway plug-ins: ``headway serve --policy lerobot:PATH`` (the optional
``headway[lerobot]`` extra, the ``lerobot`` package).

``PATH`` is a local directory written by LeRobot's ``save_pretrained``: its ``config.json``
and ``model.safetensors``. It is loaded with local files only; nothing is fetched.

Served: LeRobot's **diffusion** policy (``"type": "diffusion"``). Headway's diffusion loop
(``policies.sampling``) steps the policy's own noise scheduler (DDPM or DDIM, as configured,
with its clipping) around the policy's U-Net, so plain sampling is LeRobot's
``conditional_sample`` step for step (the same noise gives the same chunk), and real-time
chunking guides that U-Net's noise prediction (a ``"sample"``-predicting policy's output is
converted to one). Other LeRobot policy types are refused with a message: flow policies
(pi0, SmolVLA) would plug in through their ``denoise_step`` as a :class:`policies.base.FlowPlugin`
(pi0's time runs from 1 = noise to 0 = data, so Headway's tau is 1 - time and its velocity
minus pi0's), but their weights are not at hand here and that adapter is not written.

How a LeRobot diffusion policy maps onto the plug-in interface:

* **Observation keys** are LeRobot's feature names (``observation.state``,
  ``observation.image`` or ``observation.images.<camera>``, ``observation.environment_state``);
  ``--obs-map`` renames them for a client that sends others (openpi's LIBERO client sends
  ``observation/state``). Images travel uint8 ``[H, W, 3]`` or ``[3, H, W]`` and reach the
  policy as LeRobot's datasets give them: float ``[3, H, W]`` in [0, 1].
* **History**: a request carries one observation. A policy with ``n_obs_steps`` > 1 sees that
  observation repeated ``n_obs_steps`` times -- what LeRobot's own ``select_action`` gives it
  on the first step of an episode. Policies trained with ``n_obs_steps = 1`` see exactly
  what they saw in training.
* **Chunk**: LeRobot's ``predict_action_chunk``: rows ``n_obs_steps - 1 ..`` of the
  ``horizon``-long denoised trajectory, ``n_action_steps`` of them (``PolicySpec.chunk_start``,
  ``trajectory_horizon``); the whole trajectory is denoised and guided.
* **Control rate**: LeRobot's config does not record the dataset's fps; pass it as
  ``control_hz`` (``--policy-arg control_hz=10``).
* **Future state** (``future_state="absolute"``): actions are absolute targets of the state's
  quantities, so the state after the pending actions is the last of them
  (``chunking.future_state.last_commanded_position``), entries ``state_index`` of the state
  taking entries ``action_index`` of the action (default: the identity, when state and action
  have the same size).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from chunking.future_state import last_commanded_position

from .base import ImageInput, ObservationBatch, PolicySpec, VectorInput

OBS_STATE = "observation.state"
OBS_IMAGES = "observation.images"  # LeRobot's key for the cameras stacked along dim -4
OBS_ENV_STATE = "observation.environment_state"


def lerobot_policy(path: str, control_hz: float | None = None, device: str = "cpu", future_state: str | None = None,
                   state_index: Sequence[int] | None = None, action_index: Sequence[int] | None = None,
                   num_steps: int | None = None, name: str | None = None) -> "LeRobotDiffusion":
    """The LeRobot policy saved at ``path`` as a plug-in (see the module docstring).

    ``num_steps`` overrides the policy's ``num_inference_steps``; ``name`` the model's name
    (default: the directory's). Raises ``ImportError`` without the ``lerobot`` package and
    ``ValueError`` for a directory that is not a saved LeRobot diffusion policy or a missing
    ``control_hz``.
    """
    try:
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class
    except ImportError as exc:
        raise ImportError(f"serving a LeRobot policy needs the lerobot package ({exc}): "
                          "pip install 'headway[lerobot]'") from exc
    directory = Path(path)
    if not ((directory / "config.json").is_file() and (directory / "model.safetensors").is_file()):
        raise ValueError(f"{path}: not a directory written by LeRobot's save_pretrained "
                         "(config.json and model.safetensors)")
    if control_hz is None:
        raise ValueError("LeRobot's config.json does not record the control rate: give the dataset's fps, "
                         "--policy-arg control_hz=HZ")
    config = PreTrainedConfig.from_pretrained(directory, local_files_only=True)
    if config.type != "diffusion":
        raise ValueError(f"{path}: a LeRobot {config.type!r} policy; Headway serves LeRobot diffusion "
                         "policies ('type': 'diffusion')")
    config.device = device
    policy = get_policy_class(config.type).from_pretrained(directory, config=config, local_files_only=True)
    return LeRobotDiffusion(policy, float(control_hz), _future_state(future_state, config, state_index, action_index),
                            num_steps, name or directory.resolve().name)


def _future_state(kind: str | None, config: Any, state_index: Sequence[int] | None,
                  action_index: Sequence[int] | None):
    if kind in (None, "none"):
        return None
    if kind != "absolute":
        raise ValueError(f"future_state: 'absolute' or 'none', got {kind!r}")
    state_dim, action_dim = config.robot_state_feature.shape[0], config.action_feature.shape[0]
    if state_index is None and action_index is None and state_dim != action_dim:
        raise ValueError(f"future_state=absolute: the state has {state_dim} entries and the action {action_dim}; "
                         "say which state entries the actions command with state_index and action_index")
    states = list(state_index) if state_index is not None else list(range(min(state_dim, action_dim)))
    actions = list(action_index) if action_index is not None else states
    if any(not 0 <= i < state_dim for i in states) or any(not 0 <= i < action_dim for i in actions):
        raise ValueError(f"future_state: state_index within [0, {state_dim}), action_index within [0, {action_dim})")
    return last_commanded_position(states, actions)


class LeRobotDiffusion:
    """A LeRobot ``DiffusionPolicy`` as a diffusion plug-in (``policies.base.DiffusionPlugin``)."""

    def __init__(self, policy: Any, control_hz: float, future_state, num_steps: int | None, name: str) -> None:
        from lerobot.configs.types import FeatureType

        self.policy = policy.eval()
        for parameter in self.policy.parameters():
            parameter.requires_grad_(False)  # guidance differentiates in x only
        self.model = policy.diffusion
        self.config = config = policy.config
        self.device = torch.device(config.device)
        self.features = dict(config.input_features)
        self.visual = FeatureType.VISUAL
        inputs: dict[str, Any] = {}
        for key, feature in self.features.items():
            if feature.type is FeatureType.VISUAL:
                channels, height, width = feature.shape
                if channels != 3:
                    raise ValueError(f"{key}: Headway serves RGB images, this one has {channels} channels")
                inputs[key] = ImageInput(height, width)
            else:
                inputs[key] = VectorInput(int(feature.shape[0]))
        self.spec = PolicySpec(
            "diffusion", horizon=config.n_action_steps, action_dim=int(config.action_feature.shape[0]),
            control_hz=control_hz, inputs=inputs, state_keys=(OBS_STATE,),
            num_steps=int(num_steps or self.model.num_inference_steps),
            trajectory_horizon=config.horizon, chunk_start=config.n_obs_steps - 1, name=name)
        self.scheduler = self.model.noise_scheduler
        self.prediction_type = config.prediction_type
        self.future_state = future_state

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """LeRobot's action normalisation (``normalize_targets``)."""
        return self.policy.normalize_targets({"action": actions.to(self.device)})["action"].to(actions.device)

    def unnormalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """LeRobot's ``unnormalize_outputs``."""
        return self.policy.unnormalize_outputs({"action": actions.to(self.device)})["action"].to(actions.device)

    def encode(self, observation: ObservationBatch) -> torch.Tensor:
        """LeRobot's global conditioning of the batch: normalised inputs, the cameras stacked,
        the observation repeated ``n_obs_steps`` times (see the module docstring), image
        features from the policy's encoder, all flattened to ``[B, cond]``."""
        batch = {}
        for key, feature in self.features.items():
            value = observation[key].to(self.device)
            if feature.type is self.visual:
                value = value.permute(0, 3, 1, 2).to(torch.float32) / 255.0
            batch[key] = value
        batch = self.policy.normalize_inputs(batch)
        if self.config.image_features:
            batch[OBS_IMAGES] = torch.stack([batch[key] for key in self.config.image_features], dim=-4)
        steps = self.config.n_obs_steps
        history = {key: value.unsqueeze(1).expand(-1, steps, *value.shape[1:])
                   for key, value in batch.items() if key in (OBS_STATE, OBS_IMAGES, OBS_ENV_STATE)}
        return self.model._prepare_global_conditioning(history)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, conditioning: torch.Tensor) -> torch.Tensor:
        """The U-Net's output (epsilon or sample, as the policy was trained) at ``x`` and timesteps ``t``."""
        out = self.model.unet(x.to(self.device), t.to(self.device), global_cond=conditioning)
        return out.to(x.device)
