"""The classroom kit (the Makefile's `make kit` and `KIT=`): a folder made where there is internet installs a fresh
environment with no network at all; a missing kit is one sentence; PyTorch comes from its CPU-only index when that
answers. The whole kit is gigabytes: these tests build one of a few small pinned packages through the same rules."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading

import pytest

from helpers import store

SMALL = ["six==1.16.0", "docopt==0.6.2", "setuptools==84.2.1"]  # docopt: PyPI has its source only


def _make(*args, env=None, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", "-C", str(store.REPO_ROOT), *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=timeout)


def _no_network(command: list[str]) -> list[str]:
    """``command`` with no network at all where the kernel lets us (``unshare -n``, as root), else as it is (the
    tests then also point pip's index nowhere)."""
    ok = shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0
    return ["unshare", "-n", *command] if ok else command


@pytest.fixture(scope="module")
def small_kit(tmp_path_factory):
    """A kit of a few small pinned packages, made from PyPI through `make kit` (model: none, the Hub is offline)."""
    folder = tmp_path_factory.mktemp("kit")
    (folder / "requirements.txt").write_text("\n".join(SMALL[:2]) + "\n")
    (folder / "no-deps.txt").write_text(SMALL[2] + "\n")
    done = _make("kit", f"KIT={folder / 'kit'}", f"REQUIREMENTS={folder / 'requirements.txt'}",
                 f"NO_DEPS_REQUIREMENTS={folder / 'no-deps.txt'}", env={"HF_HUB_OFFLINE": "1"})
    if done.returncode != 0 and "Could not find a version" in done.stderr + done.stdout:
        pytest.skip("PyPI is not reachable from here: the kit can't be made")
    assert done.returncode == 0, done.stdout + done.stderr
    return folder


def test_a_kit_holds_the_wheels_llama_cpp_and_says_what_it_is(small_kit):
    kit = small_kit / "kit"
    wheels = {p.name.split("-")[0].lower() for p in (kit / "wheels").iterdir()}
    assert {"six", "docopt", "setuptools"} <= wheels and all(p.suffix == ".whl" for p in (kit / "wheels").iterdir())
    assert list((kit / "cache" / "llama.cpp").glob("llama_cpp_python-*.tar.gz"))
    facts = json.loads((kit / "kit.json").read_text())
    assert facts["python"] == "%d.%d" % sys.version_info[:2] and facts["platform"]
    assert "make lab KIT=" in (kit / "README.md").read_text()
    assert not (small_kit / "kit.partial").exists()


def test_a_fresh_environment_installs_from_the_kit_with_no_network(small_kit, tmp_path):
    venv = tmp_path / "venv"
    env = {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_EXTRA_INDEX_URL": "", "PIP_FIND_LINKS": "",
           "VLM_CACHE": str(tmp_path / "cache"), "PIP_CONSTRAINT": ""}
    command = _no_network(["make", "--no-print-directory", "-C", str(store.REPO_ROOT), f"{venv}/.installed",
                           f"VENV={venv}", f"KIT={small_kit / 'kit'}", f"REQUIREMENTS={small_kit / 'requirements.txt'}",
                           f"NO_DEPS_REQUIREMENTS={small_kit / 'no-deps.txt'}"])
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env}, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Installing from the kit" in done.stdout
    check = subprocess.run([venv / "bin" / "python", "-c", "import six, docopt, helpers; print(six.__version__)"],
                           capture_output=True, text=True)
    assert check.stdout.strip() == "1.16.0", check.stderr
    assert (tmp_path / "cache" / "llama.cpp").is_dir()  # the kit's llama.cpp sources, where `make llamacpp` looks


def test_a_missing_or_foreign_kit_is_one_sentence_and_nothing_is_installed(tmp_path):
    venv = tmp_path / "venv"
    done = _make(f"{venv}/.installed", f"VENV={venv}", f"KIT={tmp_path / 'nowhere'}")
    assert done.returncode != 0 and not venv.exists()
    assert done.stderr.strip().splitlines()[0] == (f"{tmp_path / 'nowhere'} is not a complete kit (no kit.json in "
                                                   "it): make one with `make kit` where there is internet, and copy "
                                                   "the whole folder.")
    kit = tmp_path / "kit"
    (kit / "wheels").mkdir(parents=True)
    (kit / "kit.json").write_text(json.dumps({"python": "2.7", "platform": "x"}))
    done = _make(f"{venv}/.installed", f"VENV={venv}", f"KIT={kit}")
    assert done.returncode != 0 and not venv.exists()
    assert "was made for Python 2.7" in done.stderr and "make the kit with Python" in done.stderr


def test_a_failed_install_leaves_no_half_made_environment(tmp_path):
    (tmp_path / "kit" / "wheels").mkdir(parents=True)  # a kit without the wheels the requirements ask for
    (tmp_path / "kit" / "kit.json").write_text(json.dumps({"python": "%d.%d" % sys.version_info[:2]}))
    (tmp_path / "requirements.txt").write_text("six==1.16.0\n")
    venv = tmp_path / "venv"
    done = _make(f"{venv}/.installed", f"VENV={venv}", f"KIT={tmp_path / 'kit'}",
                 f"REQUIREMENTS={tmp_path / 'requirements.txt'}")
    assert done.returncode != 0 and not venv.exists()
    assert "The install failed (see above); nothing half-installed was kept." in done.stderr


class _Index(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("answers", [True, False])
def test_pytorch_comes_from_its_cpu_index_when_it_answers(tmp_path, answers):
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "index.html").write_text("<html></html>")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             lambda *a: _Index(*a, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}" if answers else "http://127.0.0.1:9"
    try:
        done = _make("package-source", f"TORCH_INDEX={url}", timeout=60)
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stderr
    if answers:
        assert done.stdout.splitlines() == [f"PyTorch: the CPU-only build, from {url}.",
                                            f"pip options: --extra-index-url {url}"]
    else:
        assert done.stdout.splitlines()[0] == (f"PyTorch's CPU-only index ({url}) does not answer: installing PyPI's "
                                               "build, whose NVIDIA CUDA libraries add about 4 GB that a CPU never "
                                               "uses.")


@pytest.mark.parametrize("target, builds_llama", [
    (["lab"], False), (["run", "NOTEBOOKS=01 02 03 04"], False), (["run", "NOTEBOOKS=05"], True), (["run"], True),
    (["test"], True)])
def test_llama_cpp_is_built_only_where_it_is_used(target, builds_llama):
    """What each target would do from a fresh clone (`make -n -B`: every step printed, nothing run)."""
    done = _make("-n", "-B", *target)
    assert done.returncode == 0, done.stderr
    assert ("Building llama-cpp-python" in done.stdout) is builds_llama
