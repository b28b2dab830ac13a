"""Action-chunk policies: flow-matching and diffusion samplers, training, checkpoint loading."""
