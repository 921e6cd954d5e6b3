"""Step values reach the host without waiting for the GPU; on a CPU they are ready at once, oldest first."""

import torch
from transformers import TrainerControl, TrainerState

from wenzhen.train.callbacks import StepClock
from wenzhen.train.trainer import HostReadings


def test_cpu_readings_are_ready_at_once_in_the_order_they_were_added():
    readings = HostReadings()
    readings.add("loss", 1, torch.tensor(2.5, requires_grad=True) * 1)
    readings.add("tokens", 1, torch.tensor([7]))
    done = [(kind, step, value.tolist()) for kind, step, value in readings.ready(wait=False)]
    assert done == [("loss", 1, 2.5), ("tokens", 1, [7])]
    assert readings.ready(wait=True) == []


def test_the_step_clock_settles_only_at_its_window_edges():
    clock = StepClock(warmup=2)
    settled: list[int] = []
    state = TrainerState(max_steps=10)
    clock.settle = lambda: settled.append(state.global_step)
    control = TrainerControl()
    clock.on_train_begin(None, state, control)  # type: ignore[arg-type]
    for step in range(1, 11):
        state.global_step = step
        control.should_log = step == 6
        clock.on_step_end(None, state, control)  # type: ignore[arg-type]
    assert settled == [1, 2, 6, 10]  # the first step, end of warm-up, before a log, the last step
    assert clock.first_step_seconds is not None
