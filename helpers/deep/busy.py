"""Decoding while another program keeps one core busy, with and without ``OMP_WAIT_POLICY=PASSIVE`` (which stops
PyTorch's idle OpenMP threads spinning; OpenVINO's llm_bench recommends it). The policy is read when PyTorch
starts, so each measurement runs in a fresh process (:data:`_PROBE`). Notebook 05 explains the background.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import store

_PROBE = r"""
import json, subprocess, sys, time
import torch  # as in every notebook: PyTorch's OpenMP pool starts with the policy of this process
from optimum.intel import OVModelForVisualCausalLM
from transformers import AutoProcessor
from helpers import bench, chat, machine

folder, threads, new_tokens, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
torch.set_num_threads(threads)
if sys.argv[5] == "llamacpp":  # the GGUF folder of helpers.deep.llamacpp.convert; the prompt in the model's template
    from helpers.deep import llamacpp

    processor = AutoProcessor.from_pretrained(sys.argv[6])
    model = llamacpp.load(folder, "q4_0", threads)
    inputs, timer = llamacpp.prompt(model, processor, "Write a short story about a cat."), llamacpp.time_generation
else:
    processor = AutoProcessor.from_pretrained(folder)
    inputs, timer = chat.question_inputs(processor, "Write a short story about a cat."), bench.time_generation
    model = OVModelForVisualCausalLM.from_pretrained(folder, device="CPU", ov_config=machine.openvino_config(threads))


def decode_tok_s():
    timer(model, inputs, new_tokens)  # warm-up
    runs, start = [], time.perf_counter()
    while not runs or time.perf_counter() - start < seconds:
        runs.append(timer(model, inputs, new_tokens)["decode_tok_s"])
    return sorted(runs)[len(runs) // 2]


idle = decode_tok_s()
# another program keeps one core busy (bounded, in case this process dies before it can stop it)
spin = f"import time\nend = time.time() + {10 * seconds + 120}\nwhile time.time() < end: pass"
busy_loop = subprocess.Popen([sys.executable, "-c", spin])
try:
    time.sleep(0.5)
    busy = decode_tok_s()
finally:
    busy_loop.kill()
    busy_loop.wait()
print(json.dumps({"idle_tok_s": idle, "busy_tok_s": busy}))
"""


def decode_with_a_busy_core(folder: Path, threads: int, wait_policy: str | None, *, new_tokens: int = 32,
                            seconds: float = 5.0, processor_folder: Path | None = None) -> dict:
    """Median decode tokens/s of the IR in ``folder`` (or, with ``processor_folder``, of llama.cpp's Q4_0 GGUF in
    ``folder``, prompted with that folder's processor) on a text prompt, idle (``idle_tok_s``) and with one core
    kept busy (``busy_tok_s``), in a fresh process with ``OMP_WAIT_POLICY=wait_policy`` (``None``: unset); each
    from the generations that fit in ``seconds``. ``loss``: the share of the idle speed the busy core cost."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if wait_policy:
        env["OMP_WAIT_POLICY"] = wait_policy
    runtime = ["llamacpp", str(processor_folder)] if processor_folder else ["openvino"]
    done = subprocess.run([sys.executable, "-c", _PROBE, str(folder), str(threads), str(new_tokens), str(seconds),
                           *runtime],
                          capture_output=True, text=True, env=env, cwd=store.REPO_ROOT,
                          timeout=1800)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(f"The busy-core measurement failed in its own process ({last}).")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures["loss"] = 1.0 - figures["busy_tok_s"] / figures["idle_tok_s"]
    figures["wait_policy"] = wait_policy or "unset (OpenMP default)"
    return figures
