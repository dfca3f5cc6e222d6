"""Atomic exports: a folder is either complete or absent; interrupted runs are detected and rebuilt."""

from __future__ import annotations

import pytest

from helpers import export


def _fake_export(folder):
    """Write the files of a complete SmolVLM export (contents don't matter to the atomic logic)."""
    (folder / "config.json").write_text("{}")
    for stem in export.SUBMODELS.values():
        (folder / f"{stem}.xml").write_text("<net/>")
        (folder / f"{stem}.bin").write_bytes(b"\0" * 10)


def test_complete_build_is_moved_into_place_then_skipped(tmp_path, capsys):
    dest = tmp_path / "fp32"
    calls = []
    export.build_atomically(dest, lambda f: calls.append(f) or _fake_export(f))
    assert export.is_complete(dest) and not (tmp_path / "fp32.partial").exists()
    export.build_atomically(dest, lambda f: calls.append(f) or _fake_export(f))
    assert len(calls) == 1
    assert "Skipped" in capsys.readouterr().out


def test_a_failing_build_leaves_nothing_that_looks_like_a_model(tmp_path):
    dest = tmp_path / "fp32"

    def crash(folder):
        (folder / "config.json").write_text("{}")
        raise KeyboardInterrupt  # the user pressed stop half-way

    with pytest.raises(KeyboardInterrupt):
        export.build_atomically(dest, crash)
    assert not dest.exists()


def test_an_incomplete_build_is_refused(tmp_path):
    dest = tmp_path / "fp32"
    with pytest.raises(RuntimeError, match="openvino_language_model.xml"):
        export.build_atomically(dest, lambda f: (f / "config.json").write_text("{}"))
    assert not dest.exists()


def test_leftovers_of_an_interrupted_run_are_reported_and_rebuilt(tmp_path, capsys):
    dest = tmp_path / "int8"
    (tmp_path / "int8.partial").mkdir()
    dest.mkdir()
    (dest / "config.json").write_text("{}")  # e.g. copied by hand, never finished
    export.build_atomically(dest, _fake_export)
    out = capsys.readouterr().out
    assert "incomplete folder" in out and "openvino_language_model.xml" in out and "interrupted run" in out
    assert export.is_complete(dest)


def test_tiny_model_exports_with_three_submodels(tmp_path, tiny_standin):
    from optimum.intel import OVModelForVisualCausalLM

    def build(folder):
        OVModelForVisualCausalLM.from_pretrained(tiny_standin, export=True, compile=False).save_pretrained(folder)

    dest = export.build_atomically(tmp_path / "fp32", build)
    table = export.describe_submodels(dest)
    assert list(table.index) == list(export.SUBMODELS)
    assert (table["operations"] > 0).all()
    assert export.ir_size_bytes(dest) == pytest.approx(table["size_MB"].sum() * 1e6, rel=0.05)
    from helpers import synthetic

    assert synthetic.read_marker(dest)["name"] == "synthetic-tiny"  # the stand-in label survives export
