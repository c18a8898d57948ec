"""Tests use tiny networks: one intra-op thread is faster than two for them and immune to a busy machine."""

import os

import torch

os.environ.setdefault("MUJOCO_GL", "disable")
torch.set_num_threads(1)
