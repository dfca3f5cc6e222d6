"""Devices (helpers/devices.py): what OpenVINO offers, spelling, and an absent device named in one sentence
before anything compiles."""

from __future__ import annotations

from conftest import absent_device, one_sentence
from helpers import chat, devices


def test_devices_are_what_openvino_reports_plus_auto():
    import openvino as ov

    offered = devices.available_devices()
    assert offered == [*ov.Core().available_devices, "AUTO"] and "CPU" in offered
    assert set(devices.device_names()) == set(offered)


def test_check_device_normalises_spelling():
    assert devices.check_device("cpu") == "CPU"
    assert devices.check_device(" auto ") == "AUTO"
    assert devices.check_device("AUTO:CPU") == "AUTO:CPU"


def test_absent_device_names_the_available_ones():
    absent = absent_device()
    message = one_sentence(ValueError, devices.check_device, absent)
    assert message == (f"Device {absent!r} is not available on this machine; OpenVINO reports: "
                       f"{', '.join(devices.available_devices())}.")
    assert f"names {absent}, which is not here" in one_sentence(ValueError, devices.check_device, f"AUTO:{absent},CPU")
    assert one_sentence(ValueError, devices.check_device, "").startswith("No device given; pick one of: CPU")


def test_load_model_checks_the_device_before_compiling(tiny_fp32, monkeypatch):
    from optimum.intel import OVModelForVisualCausalLM

    def never(*args, **kwargs):
        raise AssertionError("from_pretrained must not run for an absent device")

    monkeypatch.setattr(OVModelForVisualCausalLM, "from_pretrained", never)
    absent = absent_device()
    assert one_sentence(ValueError, chat.load_model, tiny_fp32, absent).startswith(f"Device {absent!r} is not available")
