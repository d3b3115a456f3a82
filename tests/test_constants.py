"""Every constant the cost model uses is data with a source: no profile or runtime file may leave one to the code."""
import dataclasses

import pytest
import yaml

from costmodel import SpecError
from costmodel.constants import HARDWARE, RUNTIME, RUNTIME_FILE, parse_constants, runtime_constants
from costmodel.hardware import HardwareProfile, parse_profile
from costmodel.specs import PROFILES, shipped
from costmodel.stage import hardware_inputs
from costmodel.kernels import KERNEL_CONSTANTS
from costmodel.symbols import RUNTIME_SYMBOLS, H, R


@pytest.mark.parametrize("name", shipped("profiles"))
def test_every_shipped_profile_states_every_hardware_constant_with_a_source(name):
    data = yaml.safe_load((PROFILES / f"{name}.yaml").read_text())
    assert set(data["constants"]) == set(HARDWARE)
    for key, entry in data["constants"].items():
        assert set(entry) == {"value", "source"} and len(entry["source"]) >= 8, key


@pytest.mark.parametrize("key", sorted(HARDWARE))
def test_a_profile_missing_a_constant_is_a_load_error_naming_it(key):
    data = yaml.safe_load((PROFILES / "h100-sxm.yaml").read_text())
    del data["constants"][key]
    with pytest.raises(SpecError, match=f"constants.{key}: missing"):
        parse_profile(data, "p.yaml")


def test_a_constant_without_a_source_or_out_of_range_is_refused():
    data = yaml.safe_load((PROFILES / "h100-sxm.yaml").read_text())
    bare = {**data, "constants": {**data["constants"], "fragmentation": 0.05}}
    with pytest.raises(SpecError, match="constants.fragmentation"):
        parse_profile(bare, "p.yaml")
    silent = {**data, "constants": {**data["constants"], "fragmentation": {"value": 0.05, "source": ""}}}
    with pytest.raises(SpecError, match="says nothing"):
        parse_profile(silent, "p.yaml")
    wild = {**data, "constants": {**data["constants"], "fragmentation": {"value": 3.0, "source": "made up here"}}}
    with pytest.raises(SpecError, match="outside"):
        parse_profile(wild, "p.yaml")
    typo = {**data, "constants": {**data["constants"], "fragmentaton": {"value": 0.1, "source": "made up here"}}}
    with pytest.raises(SpecError, match="did you mean `fragmentation`"):
        parse_profile(typo, "p.yaml")


def test_no_profile_field_falls_back_to_a_code_default():
    # the only field with a default is the informational `records`; constants have none
    defaults = [f.name for f in dataclasses.fields(HardwareProfile)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]
    assert defaults == ["records"]


def test_the_runtime_file_states_every_runtime_constant_and_the_formulas_use_each():
    consts = runtime_constants()
    by_choice = {name for per_key in KERNEL_CONSTANTS.values() for table in per_key.values() for name in table.values()}
    assert set(consts) == set(RUNTIME) == set(RUNTIME_SYMBOLS) | by_choice
    assert not set(RUNTIME_SYMBOLS) & by_choice   # each constant feeds the formulas one way
    data = yaml.safe_load(RUNTIME_FILE.read_text())
    del data["constants"]["rope_bytes_eager"]
    with pytest.raises(SpecError, match="rope_bytes_eager"):
        parse_constants(data["constants"], "rt.yaml", RUNTIME)


def test_every_formula_input_comes_from_the_profile_or_the_runtime_file():
    from costmodel.hardware import load_profile
    inputs = hardware_inputs(load_profile("h200"))
    from costmodel.stage import COMM_SYMBOLS
    link = set(COMM_SYMBOLS)   # per candidate, from the profile's collective curves
    expected = {str(s) for s in vars(H).values() if hasattr(s, "is_Symbol")} - link
    expected |= {str(s) for s in vars(R).values() if hasattr(s, "is_Symbol")}
    assert set(inputs) == expected
