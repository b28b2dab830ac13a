"""Real-time chunking maths: soft masks, guided inpainting, execution strategies, future-state
rollout, chunk merging and delay estimation. Pure torch (``merge``: numpy, so that a
robot client needs no torch), batched along dim 0, no I/O.

One algorithm per module:

* ``soft_mask``    RTC prefix weights W (exp / linear / ones / zeros schedules)
* ``rtc``          RealTimeChunkingGuide, the StepGuide for flow and diffusion samplers
* ``realtime``     realtime_chunk, the batched per-item entry point a server calls
* ``future_state`` VLASH rollout of the state through the pending actions
* ``dynamics``     the simulated tasks' noise-free one-tick models (for that rollout and the simulator)
* ``bid``          bidirectional decoding (rejection against the previous chunk)
* ``ensemble``     ACT temporal ensembling
* ``rti``          RTI warm start from the shifted previous plan
* ``merge``        shift a chunk by executed ticks, merge an arriving chunk at a tick (numpy only)
* ``delay``        DelayEstimator (d in ticks, warm-up-robust, clamped d <= s <= H - d)
* ``strategies``   the strategies behind one control-loop interface
"""
