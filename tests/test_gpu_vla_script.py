"""benchmarks/gpu_vla.py (the prepared GPU benchmark) runs end to end at --tiny size on a CPU: one JSON
object on stdout, the same in OUT/gpu_vla.json, both requested sections ok with positive throughputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_vla.py"


@pytest.mark.slow
def test_gpu_vla_tiny_sections(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--sections", "train_throughput,generation", "--out", str(out),
         "--work", str(tmp_path / "work"), "--device", "cpu"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads(res.stdout)  # stdout is exactly one JSON object
    assert json.loads((out / "gpu_vla.json").read_text()) == data
    assert data["mode"] == "tiny"
    assert data["sections_requested"] == ["train_throughput", "generation"]
    assert "small_handworld" not in data
    assert {"python", "torch", "transformers", "missing_modules"} <= set(data["environment"])

    tr = data["train_throughput"]
    assert tr["ok"], tr.get("error")
    for key in (
        "tokens_per_s",
        "answer_tokens_per_s",
        "samples_per_s",
        "model_tflops_per_s",
        "step_seconds_mean",
    ):
        assert tr[key] > 0, key
    assert tr["setup"]["steps_timed"] >= 2
    assert tr["model"]["preset"] == "tiny" and tr["model"]["motion_ids"] == 8192
    assert tr["model_flops_per_step"]["model"] > 0
    assert tr["peak_flops"] is None and tr["mfu"] is None  # no GPU: no peak to divide by
    assert tr["loss_first"] > 0 and tr["seconds"] > 0

    gen = data["generation"]
    assert gen["ok"], gen.get("error")
    assert gen["motion_tokens_per_sample"] == 256 and gen["motion_seconds"] == 2
    assert set(gen["batches"]) == {"1", "32"}
    for b, row in gen["batches"].items():
        assert row["motion_tokens_per_s"] > 0
        assert all(r["valid"] and r["motion_tokens"] == 256 * int(b) for r in row["runs"])
