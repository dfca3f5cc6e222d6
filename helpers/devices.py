"""Which OpenVINO devices this machine has (plus ``AUTO``, the plugin that picks one), and a clear error for one
it hasn't."""

from __future__ import annotations

from functools import lru_cache

VIRTUAL_DEVICES = ("AUTO",)


@lru_cache(maxsize=1)
def _core():
    import openvino as ov

    return ov.Core()


def available_devices() -> list[str]:
    """Devices OpenVINO reports here, then ``AUTO``; e.g. ``["CPU", "AUTO"]`` or ``["CPU", "GPU", "NPU", "AUTO"]``."""
    return [*_core().available_devices, *VIRTUAL_DEVICES]


def device_names() -> dict[str, str]:
    """``{device: full name}`` as OpenVINO reports it, e.g. ``{"CPU": "Intel(R) Xeon(R) ..."}``."""
    core = _core()
    names = {device: str(core.get_property(device, "FULL_DEVICE_NAME")) for device in core.available_devices}
    names["AUTO"] = "OpenVINO picks the device (and may start on CPU while a GPU compiles)"
    return names


def _is_present(device: str, present: list[str]) -> bool:
    # "GPU" is OpenVINO's alias for "GPU.0" when the machine lists numbered GPUs.
    return device in present or any(p.startswith(device + ".") for p in present)


def check_device(device: str) -> str:
    """``device`` in OpenVINO's spelling (``"cpu"`` -> ``"CPU"``; ``AUTO:<dev>,<dev>`` too) or one clear ``ValueError``.

    Call it before compiling: OpenVINO's own error for a missing device comes from deep in the plugin.
    """
    present = _core().available_devices
    offer = ", ".join(available_devices())
    name = str(device).strip().upper()
    if not name:
        raise ValueError(f"No device given; pick one of: {offer}.")
    if name in VIRTUAL_DEVICES:
        return name
    if name.startswith("AUTO:"):
        wanted = [d.strip() for d in name[len("AUTO:"):].split(",") if d.strip()]
        missing = [d for d in wanted if not _is_present(d, present)]
        if not wanted or missing:
            raise ValueError(f"Device {device!r} names {', '.join(missing) or 'no device'}, which is not here; "
                             f"this machine has: {offer}.")
        return name
    if not _is_present(name, present):
        raise ValueError(f"Device {device!r} is not available on this machine; OpenVINO reports: {offer}.")
    return name
