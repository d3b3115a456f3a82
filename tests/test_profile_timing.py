"""launcher.gputools.profile_timing: the one timer every measurement uses (its CPU path runs here)."""
import time

import pytest
import torch

from launcher.gputools.profile_timing import TimingConfig, host_time_per_call, rotation_count, time_per_call

CPU = torch.device("cpu")


def test_time_per_call_measures_a_known_duration():
    cfg = TimingConfig(repeats=3, sample_s=0.01, warmup_s=0.0, warmup_calls=1)
    sec = time_per_call(lambda i: time.sleep(0.002), CPU, cfg)
    assert 0.002 <= sec < 0.004


def test_time_per_call_passes_fresh_indices_for_buffer_rotation():
    seen, starts = [], []
    cfg = TimingConfig(repeats=3, sample_s=1.0, warmup_s=0.0, warmup_calls=2, max_inner=4)
    time_per_call(seen.append, CPU, cfg, before_sample=lambda: starts.append(len(seen)))
    assert seen == list(range(len(seen)))  # every call gets the next index
    assert starts[0] >= 2  # at least warmup_calls before the first sample
    assert [b - a for a, b in zip(starts, starts[1:] + [len(seen)])] == [4, 4, 4]  # samples of max_inner calls


def test_fixed_counts_are_honoured_for_collectives():
    calls, hooks = [], []
    cfg = TimingConfig(repeats=4)
    time_per_call(calls.append, CPU, cfg, inner=3, warmup_calls=5, before_sample=lambda: hooks.append(1))
    assert len(calls) == 5 + 4 * 3
    assert len(hooks) == 4


def test_host_time_per_call_counts_issue_time():
    sec = host_time_per_call(lambda i: time.sleep(0.001), CPU, calls=3, repeats=2)
    assert 0.001 <= sec < 0.003


@pytest.mark.parametrize("per_set,cache,expected", [(10 * 2**20, 50 * 2**20, 10), (300 * 2**20, 50 * 2**20, 1),
                                                    (2**20, 50 * 2**20, 16)])
def test_rotation_count_covers_twice_the_cache(per_set, cache, expected):
    assert rotation_count(per_set, cache, most=16) == expected


def test_rotation_count_refuses_empty_sets():
    with pytest.raises(ValueError, match="bytes_per_set 0"):
        rotation_count(0, 2**20)
