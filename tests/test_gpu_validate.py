"""The GPU validation script's pieces that need no GPU: its report writer on a
recorded report, its epoch timer on the CPU backends, and its exit status
where no GPU works."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_validate.py"


@pytest.fixture(scope="module")
def gv():
    spec = importlib.util.spec_from_file_location("gpu_validate", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REPORT = {
    "device": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "90", "multiprocessors": 132,
               "memory_GiB": 79.1, "driver": "580.00", "driver_cuda_version": "13.0",
               "cuda_runtime": "13.0"},
    "versions": {"scratchnet": "0.1.0", "cupy": "14.2.0", "numpy": "2.4.6", "torch": None},
    "tests": {"passed": True, "command": "pytest -m gpu -q", "summary": "120 passed", "seconds": 9.5},
    "compile": {"kernels": 22, "seconds": 1.2, "arch": "sm_90"},
    "copy_bandwidth_GBps": 2900.0,
    "kernels": [{"op": "adam_update", "shape": "4096x1000", "dtype": "float32", "us": 40.0,
                 "floor_us": 30.0, "fraction_of_floor": 0.75, "composed_us": 300.0,
                 "speedup_vs_composed": 7.5}],
    "epoch": {"architecture": "784-256-128-10", "batch_size": 512, "optimizer": "adam",
              "size": "full (60,000 samples)", "scratchnet_s": 0.21, "torch_s": 0.25},
}


def test_markdown_report_names_device_results_and_epoch(gv, tmp_path):
    path = tmp_path / "report.md"
    gv.write_markdown(REPORT, path)
    text = path.read_text()
    assert "NVIDIA H100 80GB HBM3 (sm_90" in text
    assert "## GPU tests: PASS" in text and "120 passed" in text
    assert "| adam_update | 4096x1000 | float32 | 40.0 | 30.0 | 75% | 300.0 | 7.5x |" in text
    assert "MLP 784-256-128-10, full (60,000 samples), batch 512, adam" in text
    assert "- scratchnet (cupy): 0.21" in text and "- PyTorch eager: 0.25" in text


def test_epoch_timer_runs_the_registry_case(gv):
    seconds = gv.epoch_time("numpy", batch_size=512, quick=True)
    assert seconds is not None and seconds > 0


def test_epoch_timer_returns_none_for_an_unusable_implementation(gv, monkeypatch):
    from scratchnet.bench import cases
    monkeypatch.setattr(cases.EpochCase, "unavailable", lambda self: "no device")
    assert gv.epoch_time("cupy", quick=True) is None


def test_script_exits_2_with_the_reason_where_no_gpu_works(tmp_path):
    from scratchnet.backends import BackendUnavailableError, get_ops
    try:
        get_ops("cupy")
        pytest.skip("a GPU works here: the script would run for real")
    except BackendUnavailableError:
        pass
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "no usable GPU" in proc.stdout + proc.stderr
