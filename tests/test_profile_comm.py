"""launcher.gputools.profile_comm on two forked gloo ranks: every rank issues the same calls and reports every size."""
import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from launcher.gputools.profile_assemble import Measurements, merge_ranks
from launcher.gputools.profile_comm import COLLECTIVES, comm_counts, measure_collectives
from launcher.gputools.profile_timing import TimingConfig

SIZES = (2**12, 2**16, 2**20)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        table = measure_collectives(SIZES, torch.device("cpu"), TimingConfig(repeats=2, warmup_calls=1))
        with open(os.path.join(out_dir, f"{rank}.json"), "w") as f:
            json.dump(table, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_collectives_are_measured_for_every_op_and_size_on_every_rank(tmp_path):
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, start_method="fork")
    tables = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    for t in tables:
        assert sorted(t) == sorted(COLLECTIVES)
        for rows in t.values():
            assert [r[0] for r in rows] == [float(s) for s in SIZES]
            assert all(r[1] > 0 for r in rows)
    merged = merge_ranks([Measurements(world_size=2, collectives=t) for t in tables])
    for op in COLLECTIVES:
        for i, (nbytes, sec) in enumerate(merged.collectives[op]):
            assert sec == max(tables[0][op][i][1], tables[1][op][i][1])


def test_sizes_are_rounded_to_whole_shards_and_tiny_ones_refused():
    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        table = measure_collectives((4099,), torch.device("cpu"), TimingConfig(repeats=1), ops=("all_reduce",))
        assert table["all_reduce"][0][0] == 4096.0
        with pytest.raises(ValueError, match="message size 3 is below 4 x world size 1 bytes"):
            measure_collectives((3,), torch.device("cpu"), TimingConfig())
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("nbytes,calls", [(2**16, 100), (2**28, 1), (2**30, 1), (2**24, 16)])
def test_calls_per_sample_depend_only_on_the_message_size(nbytes, calls):
    assert comm_counts(nbytes) == calls


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_emulated_nccl_footprint_slows_gemms_and_reports_its_copy_rate():
    from launcher.gputools.profile_comm import measure_emulated_comm_overlap
    from launcher.gputools.profile_timing import TimingConfig
    slow, gbps = measure_emulated_comm_overlap(torch.device("cuda"), TimingConfig(repeats=3, sample_s=0.002),
                                               gemm_size=4096, nbytes=64 * 2**20, window_s=0.02, repeats=1)
    assert 0 < slow < 1 and gbps > 50
