"""The collective curves of each shipped profile, from measured and published NCCL runs, and the table they give.

    python benchmarks/collective_tiers.py            # the bus bandwidth each profile's tiers give, per size
    python benchmarks/collective_tiers.py --write    # (re)write the intra_node / inter_node sections of profiles/

The sources are benchmarks/data/collectives-published.yaml (each entry cited there; the 2- and 4-rank H200 curves
are this workplace's own 4×H200 host, ../shared/measurements/h200x4-host-hw.jsonl). Which entries stand for which
profile is the table ``CHOICE`` below, with the reason; the rules for what was not measured are costmodel.comm's.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from costmodel import load_profile
from costmodel.comm import parse_tier
from costmodel.hardware import parse_profile
from costmodel.specs import PROFILES

DATA = Path(__file__).resolve().parent / "data" / "collectives-published.yaml"
NVLINK4 = [("h200x4-host", "h200", "nvlink", None), ("ml-engineering", "h200", "nvlink", "RING/LL up to 1 MiB, NVLS")]
EFA_400G = [("ml-engineering", "b200", "efa", None)]
CHOICE = {  # profile: (intra-node entries, why; inter-node entries, members per node, scale, why)
    "h200": (NVLINK4, "NVLink 4 / NVSwitch: this workplace's 4xH200 host (2 and 4 ranks) and ml-engineering's 8xH200 "
             "all-reduce (NCCL's default algorithms)",
             EFA_400G, 8, 1.0, "400 Gb/s per GPU: ml-engineering's 4 nodes of 8 B200 on EFA (3.2 Tb/s per node; the "
             "NICs bound it, not the GPUs)"),
    "h100-sxm": (NVLINK4, "NVLink 4 / NVSwitch as on H200 (same NVLink generation and switch): this workplace's 4xH200 "
                 "host and ml-engineering's 8xH200 all-reduce",
                 EFA_400G, 8, 1.0, "400 Gb/s NDR per GPU: ml-engineering's 4 nodes of 8 B200 on EFA (3.2 Tb/s per node, "
                 "NIC-bound)"),
    "a100-80g": ([("ml-engineering", "a100", "nvlink", None)], "NVLink 3 / NVSwitch: ml-engineering's 8xA100 all-reduce",
                 EFA_400G, 8, 0.5, "200 Gb/s HDR per GPU: the 400 Gb/s-per-GPU EFA curve at half the NIC rate"),
    "b200": ([("ml-engineering", "b200", "nvlink", None)], "NVLink 5 / NVSwitch: ml-engineering's 8xB200 all-reduce",
             EFA_400G, 8, 1.0, "400 Gb/s per GPU: ml-engineering's 4 nodes of 8 B200 on EFA"),
}
CHOICE["h200-measured"] = CHOICE["h200"]
CHOICE["a100-40g"] = CHOICE["a100-80g"]


def _entries(data: list[dict], picks) -> list[dict]:
    out = []
    for src, gpu, tier, algo in picks:
        for e in data:
            if (e["source"], e["gpu"], e["tier"]) == (src, gpu, tier) and e.get("points") and len(e["points"]) > 1 \
                    and (algo is None or str(e.get("algo", "")).startswith(algo)):
                out.append(e)
    return out


def tier_data(entries: list[dict], why: str, members: int | None = None, scale: float = 1.0) -> dict:
    curves: dict = {}
    for e in entries:
        curves.setdefault(e["collective"], {})[int(e["ranks"])] = [[int(b), round(float(g), 3)] for b, g in e["points"]]
    refs = sorted({e["reference"] if e["source"] == "h200x4-host" else f"{e['source']} ({e['reference']})"
                   for e in entries})
    out = {"source": f"{why}; from benchmarks/data/collectives-published.yaml: {'; '.join(refs)}", "curves": curves}
    if members is not None:
        out["members_per_node"] = members
    if scale != 1.0:
        out["scale"] = scale
    return out


def derived_tier(bw_gbps: float, latency_s: float, why: str, members: int | None = None) -> dict:
    """A tier where nothing was measured: all-reduce points of a ring with the datasheet's bus bandwidth and
    latency per step, at 8 ranks (time = 2·7·latency + 2·7/8·size/bw)."""
    pts = []
    for size in (2**16, 2**20, 2**24, 2**28, 2**30):
        t = 14 * latency_s + 1.75 * size / (bw_gbps * 1e9)
        pts.append([size, round(1.75 * size / t / 1e9, 3)])
    out = {"source": f"derived, not measured: {why}", "curves": {"all_reduce": {8: pts}}}
    if members is not None:
        out["members_per_node"] = members
    return out


def tiers(name: str) -> tuple[dict, dict]:
    data = yaml.safe_load(DATA.read_text())
    if name == "l4":
        return (derived_tier(12.0, 8e-6, "a ring over PCIe Gen4 x16 at the datasheet's ~12 GB/s bus bandwidth and "
                             "8 us per step (no NVLink on L4)"),
                derived_tier(10.0, 15e-6, "a ring over 100 Gb/s Ethernet per GPU at ~10 GB/s and 15 us per step", 8))
    intra, why_in, inter, members, scale, why_out = CHOICE[name]
    return tier_data(_entries(data, intra), why_in), tier_data(_entries(data, inter), why_out, members, scale)


def write() -> None:
    for path in sorted(PROFILES.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        data["intra_node"], data["inter_node"] = tiers(data["name"])
        path.write_text(parse_profile(data, path).to_yaml())
        print(f"wrote {path}")


def table() -> None:
    sizes = (2**20, 2**24, 2**27, 2**30)
    print("| profile | tier | collective | ranks | " + " | ".join(f"{s / 2**20:g} MiB" for s in sizes) + " |")
    print("|---|---|---|---:|" + "---:|" * len(sizes))
    for path in sorted(PROFILES.glob("*.yaml")):
        prof = load_profile(path.stem)
        for tier_name in ("intra_node", "inter_node"):
            tier = getattr(prof, tier_name)
            for op in ("all_reduce", "all_gather", "reduce_scatter"):
                for n in (2, 8):
                    from costmodel.comm import bus_factor
                    t = tier.time_s(op, n, list(sizes))
                    bw = [float(bus_factor(op, n)) * s / x / 1e9 for s, x in zip(sizes, t)]
                    print(f"| {prof.name} | {tier_name} | {op} | {n} | " + " | ".join(f"{b:.0f}" for b in bw) + " |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="rewrite the profiles' intra_node and inter_node sections")
    a = ap.parse_args(argv)
    if a.write:
        write()
    table()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
