"""Hardware profiles: the measured (or datasheet) constants the cost model stands on, kept as data."""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .comm import Tier, parse_tier, tier_dict
from .constants import HARDWARE, Constant, parse_constants
from .errors import SpecError, build_dataclass, read_yaml, require, short
from .specs import ClusterSpec, probe, resolve

GiB = 2**30
"""Bytes in a GiB: memory is bytes everywhere inside loadmaster, GiB only where a person reads it."""


@dataclass(kw_only=True, frozen=True)
class Curve:
    """Achieved fraction of a peak as a saturating function of problem size x:
    ``eff(x) = max_eff / (1 + (half_x / x) ** exponent)``; ``points`` keeps the measurements it was fit to."""

    max_eff: float
    """Asymptotic efficiency for very large problems (0-1]."""
    half_x: float
    """Size at which half of max_eff is reached."""
    exponent: float = 1.0
    """Steepness of the rise."""
    points: list[list[float]] = field(default_factory=list)
    """Measured [size, efficiency] pairs (informational; the fit is what the model uses)."""

    def __call__(self, x):
        return self.max_eff / (1.0 + (self.half_x / x) ** self.exponent)


@dataclass(kw_only=True, frozen=True)
class HardwareProfile:
    """One GPU type and its links. ``source`` says where the numbers come from."""

    name: str
    """Profile name (file stem)."""
    source: str
    """'datasheet ...' or 'measured <date> <gpu> <torch version>'."""
    memory_gib: float
    """Device memory PyTorch can allocate, GiB."""
    bf16_tflops: float
    """Dense bf16 tensor-core peak, TFLOP/s (MFU is reported against this)."""
    fp8_tflops: float
    """Dense float8 tensor-core peak, TFLOP/s."""
    hbm_gbps: float
    """Achievable HBM bandwidth (a large device copy, read + write), GB/s."""
    host_link_gbps: float
    """Pinned host-device copy bandwidth per GPU, GB/s."""
    cpu_adam_params_per_s: float
    """Parameters per second one GPU's share of the host CPU updates with AdamW (offloaded state)."""
    host_memory_gib: float
    """CPU memory per node, GiB."""
    intra_node: Tier
    """Collective curves between GPUs of one node (NVLink / NVSwitch or PCIe), costmodel.comm."""
    inter_node: Tier
    """Collective curves of groups spanning nodes, with the GPUs per node they were measured with."""
    gemm: Curve
    """bf16 GEMM efficiency (of bf16_tflops) by GEMM FLOPs (2mnk)."""
    fp8_gemm: Curve
    """float8 GEMM efficiency (of fp8_tflops) by GEMM FLOPs: a bare tensorwise torch._scaled_mm (the casts
    torchao adds around it are costed separately, costmodel.timing.fp8_cast_s)."""
    attention: Curve
    """Causal SDPA forward+backward efficiency (of bf16_tflops) by FLOPs per call."""
    constants: dict[str, Constant]
    """Every hardware constant of costmodel.constants.HARDWARE, each ``{value, source}`` (overlap factors,
    in-training throughput ratios, elementwise efficiency, launch and hook overheads, memory outside the allocator,
    fragmentation, usable host share)."""
    records: dict = field(default_factory=dict)
    """How the profile was made (raw host copies, CPU AdamW threads, collective fits); informational, never read
    by the cost formulas."""

    def const(self, name: str) -> float:
        """A hardware constant's value (costmodel.constants.HARDWARE names it)."""
        return self.constants[name].value

    @property
    def fragmentation(self) -> float:
        return self.const("fragmentation")

    @property
    def context_gib(self) -> float:
        return self.const("context_gib")

    @property
    def kernel_launch_s(self) -> float:
        return self.const("kernel_launch_s")

    def with_constants(self, source: str, **values: float) -> "HardwareProfile":
        """This profile with some constants replaced, each credited to ``source``."""
        unknown = [k for k in values if k not in HARDWARE]
        if unknown:
            raise ValueError(f"unknown hardware constants {unknown}; known: {', '.join(HARDWARE)}")
        new = {**self.constants, **{k: Constant(value=float(v), source=source) for k, v in values.items()}}
        return dataclasses.replace(self, constants=new)

    # ---- the "does it fit" rule: written once, here ----------------------------------------------------
    @property
    def usable_memory_bytes(self) -> float:
        """Bytes the allocator may hand out: device memory less what lives outside it, over the fragmentation."""
        return (self.memory_bytes - self.context_gib * GiB) / (1 + self.fragmentation)

    def needed_bytes(self, allocated_bytes: float) -> float:
        """Device memory a peak of ``allocated_bytes`` takes: allocator fragmentation and the context on top."""
        return allocated_bytes * (1 + self.fragmentation) + self.context_gib * GiB

    def fits(self, allocated_bytes: float) -> bool:
        return self.needed_bytes(allocated_bytes) <= self.memory_bytes

    @property
    def host_budget_bytes(self) -> float:
        """CPU memory of one node that offloaded state and activations may take."""
        return self.host_memory_gib * GiB * self.const("host_memory_usable_fraction")

    @property
    def memory_bytes(self) -> float:
        return self.memory_gib * GiB

    def with_cluster(self, cluster: ClusterSpec) -> "HardwareProfile":
        """This profile with the cluster's link overrides applied: each tier's curves scaled so that their
        largest-size all-reduce bus bandwidth (inside a node), or that bandwidth per NIC (between nodes), is the
        cluster's stated one."""
        p = self
        for key, per_nic in (("intra_node", False), ("inter_node", True)):
            want = getattr(cluster, f"{key}_bandwidth_gbps")
            if want:
                tier = getattr(p, key)
                have = max(pts[-1][1] for pts in tier.curves["all_reduce"].values()) * tier.scale
                if per_nic:
                    have /= tier.members_per_node or 1
                p = dataclasses.replace(p, **{key: dataclasses.replace(tier, scale=tier.scale * want / have)})
        if cluster.host_memory_gib:
            p = dataclasses.replace(p, host_memory_gib=cluster.host_memory_gib)
        return p

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key, v in out.items():
            if isinstance(v, Tier):
                out[key] = tier_dict(v)
            elif dataclasses.is_dataclass(v):
                out[key] = dataclasses.asdict(v)
            elif key == "constants":
                out[key] = {k: dataclasses.asdict(c) for k, c in v.items()}
        if not self.records:
            out.pop("records")
        return out

    def to_yaml(self) -> str:
        """The shipped files' format: nested sections and each measured point (``[size, efficiency]``) on one
        line."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, width=120, default_flow_style=None)


_NESTED = {"gemm": Curve, "fp8_gemm": Curve, "attention": Curve}


def parse_profile(data: dict, source: str | Path) -> HardwareProfile:
    """Build a profile from its dict, nested sections included, with the usual one-line errors."""
    data = dict(data)
    for key, cls in _NESTED.items():
        if key in data:
            require(isinstance(data[key], dict), source, key, f"is {short(data[key])}", "it must be a mapping")
            try:
                data[key] = build_dataclass(cls, data[key], source, what=key)
            except SpecError as e:
                raise SpecError(source, f"{key}.{e.key}", e.problem, e.fix) from None
    if "constants" in data:
        data["constants"] = parse_constants(data["constants"], source, HARDWARE)
    for key in ("intra_node", "inter_node"):
        if key in data:
            data[key] = parse_tier(data[key], str(source), key)
    prof = build_dataclass(HardwareProfile, data, source, what="profile")
    for key in ("memory_gib", "bf16_tflops", "fp8_tflops", "hbm_gbps", "host_link_gbps", "cpu_adam_params_per_s"):
        v = getattr(prof, key)
        require(v > 0 and math.isfinite(v), source, key, f"is {v}", "it must be positive")
    for key in ("gemm", "fp8_gemm", "attention"):
        c = getattr(prof, key)
        require(0 < c.max_eff <= 1, source, f"{key}.max_eff", f"is {c.max_eff}", "it must be in (0, 1]")
        require(c.half_x > 0 and c.exponent > 0, source, f"{key}.half_x", "half_x and exponent must be positive")
    require(prof.inter_node.members_per_node is not None, source, "inter_node.members_per_node", "missing",
            "say how many GPUs of each node the inter-node curves were measured with")
    return prof


@functools.lru_cache(maxsize=64)
def _load_cached(path: str, mtime: float) -> HardwareProfile:
    return parse_profile(read_yaml(path), path)


@dataclass(kw_only=True, frozen=True)
class Variant:
    """A GPU part that differs from a shipped profile in power limit, memory size or HBM (profiles/variants/)."""

    name: str
    """Variant name (file stem)."""
    base: str
    """The profile it is derived from."""
    source: str
    """Where the part's figures come from."""
    power_limit_w: float
    """The part's power limit, W."""
    base_power_limit_w: float
    """The base profile's power limit, W."""
    memory_gib: float
    """The part's device memory PyTorch can allocate, GiB."""
    hbm_datasheet_gbps: float
    """The part's datasheet HBM bandwidth, GB/s."""
    base_hbm_datasheet_gbps: float
    """The base part's datasheet HBM bandwidth, GB/s."""


def derive_variant(base: HardwareProfile, v: Variant) -> HardwareProfile:
    """The variant by one stated rule: compute peaks scale with (power limit / base power limit)^(1/3) (dynamic
    power ~ f·V² with V ~ f, so the sustained clock goes as P^(1/3)); achievable HBM bandwidth with the datasheet
    ratio; memory is the part's; curves, links and constants are the base's."""
    clock = min(1.0, (v.power_limit_w / v.base_power_limit_w) ** (1 / 3))
    return dataclasses.replace(
        base, name=v.name, memory_gib=v.memory_gib, bf16_tflops=base.bf16_tflops * clock,
        fp8_tflops=base.fp8_tflops * clock, hbm_gbps=base.hbm_gbps * v.hbm_datasheet_gbps / v.base_hbm_datasheet_gbps,
        source=f"{v.source}; derived from {base.name} (costmodel.hardware.derive_variant: compute x {clock:.3f} "
               f"= ({v.power_limit_w:g} W / {v.base_power_limit_w:g} W)^(1/3), HBM x "
               f"{v.hbm_datasheet_gbps:g}/{v.base_hbm_datasheet_gbps:g})")


def load_profile(ref: str | Path | HardwareProfile) -> HardwareProfile:
    """A profile from an object, a path, a name in profiles/ or a variant in profiles/variants/."""
    if isinstance(ref, HardwareProfile):
        return ref
    from .specs import PROFILES, probe
    variant = PROFILES / "variants" / f"{ref}.yaml"
    if isinstance(ref, str) and not probe(Path(ref).exists) and probe(variant.is_file):
        v = build_dataclass(Variant, read_yaml(variant), variant, what="variant")
        return derive_variant(load_profile(v.base), v)
    path = resolve(ref, "profiles")
    return _load_cached(str(path), path.stat().st_mtime)


def profile_for(cluster: ClusterSpec) -> HardwareProfile:
    """The cluster's GPU profile with its link overrides; a measured profile wins over the datasheet one."""
    name = cluster.gpu
    measured = resolve_measured(name)
    return load_profile(measured or name).with_cluster(cluster)


_GPU_NAMES = [  # (pattern on the CUDA device name, shipped profile) in order; A100 is split by memory below.
    # \bL4\b: an L40S (48 GB, another chip) must not be taken for an L4.
    (r"H200", "h200"), (r"H100", "h100-sxm"), (r"B200", "b200"), (r"\bL4\b", "l4"), (r"A100", "a100")]


def profile_name_for_gpu(device_name: str, total_memory_bytes: float) -> str | None:
    """The shipped datasheet profile of a CUDA device (``torch.cuda.get_device_name()``), None if none fits."""
    import re
    for pattern, name in _GPU_NAMES:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            if name == "a100":
                return "a100-80g" if total_memory_bytes > 60 * GiB else "a100-40g"
            return name
    return None


def gpu_family(ref: str) -> str:
    """The shipped datasheet profile a cluster's ``gpu`` belongs to (what profile_name_for_gpu reports for the
    device): a variant's base, a measured profile's GPU (``h200-measured`` -> ``h200``), else the name itself."""
    from .specs import PROFILES
    name = Path(str(ref)).stem.removesuffix("-measured")
    variant = PROFILES / "variants" / f"{name}.yaml"
    if probe(variant.is_file):
        return str(read_yaml(variant).get("base", name))
    return name


def resolve_measured(name: str) -> str | None:
    """`<name>-measured` in profiles/ if it exists (made by `loadmaster profile`)."""
    from .specs import PROFILES
    if probe(Path(name).exists):
        return None
    cand = PROFILES / f"{name}-measured.yaml"
    return str(cand) if probe(cand.is_file) else None
