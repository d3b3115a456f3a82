"""loadmaster's cost model: specs and the plan schema, hardware profiles, the symbolic cost of a plan."""
from .errors import SpecError
from .flops import mfu, model_flops_per_token
from .hardware import GiB, HardwareProfile, load_profile, profile_for
from .plan import Plan, check_plan, load_plan, parse_fp8_budget, parse_plan
from .specs import ClusterSpec, JobSpec, ModelSpec, load_cluster, load_job, load_model

__all__ = ["GiB", "SpecError", "ModelSpec", "ClusterSpec", "JobSpec", "Plan", "HardwareProfile", "load_model",
           "load_cluster", "load_job", "load_plan", "parse_plan", "parse_fp8_budget", "check_plan", "load_profile",
           "profile_for",
           "model_flops_per_token", "mfu", "predict"]


def __getattr__(name):  # predict pulls in sympy; keep `import costmodel` light for the trainer
    if name == "predict":
        from .prediction import predict
        return predict
    raise AttributeError(name)
