"""The benchmark report generator, on a small recorded pytest-benchmark JSON.

``tests/data/bench_sample.json`` was written by hand in pytest-benchmark 5.2's
format (a few cases of every group); nothing here runs a benchmark. Expected
ratios are computed from the raw JSON in this file, not with the report's code.
"""

import json
import re
import statistics
from pathlib import Path

import pytest

from scratchnet.bench import report, run

SAMPLE = Path(__file__).parent / "data" / "bench_sample.json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def raw():
    with open(SAMPLE, encoding="utf-8") as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    paths = report.write_report(SAMPLE, out)
    return out, paths, (out / "report.md").read_text(encoding="utf-8")


def tables_after(markdown, heading):
    """The rows (dicts by header) of the first Markdown table after ``heading``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    i = next(j for j in range(start + 1, len(lines)) if lines[j].startswith("|"))
    headers = [c.strip() for c in lines[i].strip("|").split("|")]
    assert set(lines[i + 1].replace("|", "").replace("-", "")) <= {""}, "no separator row"
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(headers, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def number(cell):
    """12.3× / 1,234 / 0.968 -> float."""
    m = re.fullmatch(r"([0-9][0-9,]*(?:\.[0-9]+)?)×?", cell)
    assert m, f"not a number: {cell!r}"
    return float(m.group(1).replace(",", ""))


def close(cell, expected):
    """The cell shows ``expected`` to the precision it was printed with."""
    value = number(cell)
    digits = len(cell.rstrip("×").partition(".")[2])
    assert abs(value - expected) <= 0.5 * 10 ** -digits + 1e-12, (cell, expected)


def bench(raw, **want):
    """The one benchmark whose extra_info matches ``want``."""
    hits = [b for b in raw["benchmarks"]
            if all(b["extra_info"].get(k) == v for k, v in want.items())]
    assert len(hits) == 1, (want, len(hits))
    return hits[0]


def median(b):
    return statistics.median(b["stats"]["data"])


# --------------------------------------------------------------- tables and ratios
def test_sample_is_pytest_benchmark_json(raw):
    assert {"machine_info", "commit_info", "benchmarks", "datetime", "version"} <= set(raw)
    kinds = {b["extra_info"]["kind"] for b in raw["benchmarks"]}
    assert kinds == {"train", "fused", "epoch", "floor", "inference", "compile"}
    for b in raw["benchmarks"]:
        assert b["stats"]["median"] == pytest.approx(median(b))


def test_report_has_every_section(rendered):
    _, paths, md = rendered
    for heading in ("# scratchnet benchmark report", "## Headline", "## Machine and software",
                    "## 1. Per-sample vs mini-batch", "## 2. Fused vs composed",
                    "## 3. End to end", "### GEMM floor", "## 4. Inference",
                    "## 5. Kernel compilation"):
        assert heading in md, heading
    assert paths["markdown"].name == "report.md"


def test_per_sample_vs_minibatch_speedups(raw, rendered):
    rows = tables_after(rendered[2], "## 1. Per-sample vs mini-batch")
    assert [(r["backend"], r["batch size"]) for r in rows] == [
        ("numpy", "1"), ("numpy", "128"), ("numba", "1"), ("numba", "128")]
    for r in rows:
        bs = int(r["batch size"])
        ps = bench(raw, kind="train", impl=r["backend"], batch_size=bs, mode="per_sample")
        mb = bench(raw, kind="train", impl=r["backend"], batch_size=bs, mode="minibatch")
        ps_rate = ps["extra_info"]["samples"] / median(ps)
        mb_rate = mb["extra_info"]["samples"] / median(mb)
        close(r["per-sample samples/s"], round(ps_rate))
        close(r["mini-batch samples/s"], round(mb_rate))
        close(r["mini-batch speed-up"], mb_rate / ps_rate)
    # per-sample ran on 512 samples, mini-batch on 4096: the ratio is of rates, not times
    numpy128 = next(r for r in rows if r["backend"] == "numpy" and r["batch size"] == "128")
    close(numpy128["mini-batch speed-up"], (4096 / 0.0362) / (512 / 0.320))


def test_fused_vs_composed_speedups(raw, rendered):
    rows = tables_after(rendered[2], "## 2. Fused vs composed")
    assert {(r["op"], r["shape"]) for r in rows} == {("bias_act", "128x256"),
                                                     ("adam_update", "4096x1000")}
    for r in rows:
        c = bench(raw, kind="fused", op=r["op"], shape=r["shape"], variant="composed")
        f = bench(raw, kind="fused", op=r["op"], shape=r["shape"], variant="fused")
        close(r["fused speed-up"], median(c) / median(f))
    adam = next(r for r in rows if r["op"] == "adam_update")
    assert adam["composed median"] == "41.2 ms" and adam["fused median"] == "6.10 ms"


def test_epoch_ratios_to_pytorch_numpy_and_floor(raw, rendered):
    rows = tables_after(rendered[2], "## 3. End to end")
    names = {"numpy": "numpy", "numba": "numba", "PyTorch CPU": "torch-cpu"}
    assert len(rows) == 5
    for r in rows:
        impl, opt = names[r["implementation"]], r["optimizer"]
        t = median(bench(raw, kind="epoch", impl=impl, optimizer=opt, batch_size=128))
        torch_t = median(bench(raw, kind="epoch", impl="torch-cpu", optimizer=opt,
                               batch_size=128))
        numpy_t = median(bench(raw, kind="epoch", impl="numpy", optimizer=opt, batch_size=128))
        floor_t = median(bench(raw, kind="floor", impl=impl, batch_size=128))
        close(r["÷ PyTorch CPU"], t / torch_t)
        close(r["÷ numpy"], t / numpy_t)
        close(r["× GEMM floor"], t / floor_t)
        close(r["samples/s"], round(8192 / t))
    numba_sgd = next(r for r in rows if r["implementation"] == "numba")
    close(numba_sgd["÷ numpy"], 0.0590 / 0.0721)        # numba ÷ numpy
    close(numba_sgd["÷ PyTorch CPU"], 0.0590 / 0.0745)  # scratchnet ÷ PyTorch
    floors = tables_after(rendered[2], "### GEMM floor")
    assert [r["implementation"] for r in floors] == ["numpy", "numba", "PyTorch CPU"]
    assert floors[0]["steps"] == "64"


def test_inference_and_compile(raw, rendered):
    rows = tables_after(rendered[2], "## 4. Inference")
    b1 = {r["implementation"]: r for r in rows if r["batch size"] == "1"}
    close(b1["numpy"]["µs/sample"], 0.0736 / 4096 * 1e6)
    close(b1["numpy"]["÷ PyTorch CPU"], 0.0736 / 0.167)
    close(b1["PyTorch CPU"]["predictions/s"], round(4096 / 0.167))
    comp = tables_after(rendered[2], "## 5. Kernel compilation")
    assert comp == [{"backend": "numba", "method": "`warmup()`", "cold compile": "11.20 s",
                     "from cache": "900 ms", "import + backend set-up": "450 ms"}]


def test_machine_info_in_report(rendered):
    rows = tables_after(rendered[2], "## Machine and software")
    info = {r["item"].strip("*"): r["value"] for r in rows}
    assert info["CPU"] == "Sample CPU @ 2.60GHz"
    assert info["Cores / threads"].startswith("2 physical cores, 2 logical CPUs")
    assert info["Python"].startswith("3.11.7")
    assert info["NumPy"] == "2.4.6" and info["Numba"] == "0.68.1"
    assert info["PyTorch"] == "2.13.0+cpu" and info["CuPy"] == "not installed"
    assert info["scratchnet"].startswith("0.1.0 (git 0123456789")
    assert "openblas 0.3.31.188.0: 2 threads" in info["BLAS/threads (blas)"]
    assert info["Date of the run"].startswith("2026-01-15T10:02:11")
    assert info["backend numba"].startswith("numba")
    assert info["CPU used by other processes during the run"].startswith("1% of the machine")


def test_busy_machine_is_flagged(raw):
    assert "**Warning:**" not in report.render_markdown(raw)
    busy = json.loads(json.dumps(raw))
    busy["machine_info"]["scratchnet"]["foreign_cpu"]["foreign_share"] = 0.62
    md = report.render_markdown(busy)
    assert "**Warning:** the machine was busy" in md and "62% of the machine" in md
    # without the CPU accounting, a load average above the CPU count warns
    del busy["machine_info"]["scratchnet"]["foreign_cpu"]
    busy["machine_info"]["scratchnet"]["load_average_start"] = [7.5, 5.0, 2.0]
    assert "load average up to 7.5 on 2 CPUs" in report.render_markdown(busy)


def test_json_without_scratchnet_machine_info_uses_this_machine(raw):
    bare = json.loads(json.dumps(raw))
    del bare["machine_info"]["scratchnet"]
    md = report.render_markdown(bare)
    assert "this is the machine that *rendered* the report" in md
    assert "## 1. Per-sample vs mini-batch" in md


# --------------------------------------------------------------------------- plots
def test_plots_are_valid_pngs(rendered):
    pytest.importorskip("matplotlib")
    out, paths, md = rendered
    assert [p.name for p in paths["plots"]] == ["samples_per_s.png", "speedup.png"]
    for name in ("samples_per_s.png", "speedup.png"):
        data = (out / name).read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC), name
        assert f"]({name})" in md
    from matplotlib.image import imread
    img = imread(out / "samples_per_s.png")
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200


def test_missing_matplotlib_still_writes_markdown(tmp_path, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    out = report.write_report(SAMPLE, tmp_path)
    assert out["plots"] == [] and "matplotlib is not installed" in out["note"]
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "matplotlib is not installed" in md and not list(tmp_path.glob("*.png"))


# ----------------------------------------------------------------------- the runner
def test_main_from_json_renders(tmp_path, capsys):
    assert run.main(["--from-json", str(SAMPLE), "--report", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "report.md").is_file()
    assert "report written to" in capsys.readouterr().out


def test_main_from_json_without_report_prints_markdown(capsys):
    assert run.main(["--", "--from-json", str(SAMPLE)]) == 0   # a leading "--" is dropped
    assert "## 1. Per-sample vs mini-batch" in capsys.readouterr().out


def test_main_from_bad_json_fails_clearly(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{}", encoding="utf-8")
    assert run.main(["--from-json", str(bad), "--report", str(tmp_path / "r")]) == 2
    assert "not a pytest-benchmark JSON" in capsys.readouterr().err


def test_benchmarks_folder_found_in_checkout():
    bench, root = run.find_benchmarks()
    assert bench is not None and (bench / "conftest.py").is_file()
    cmd = run.pytest_command(bench, root / "x.json", quick=True, keyword="numpy")
    assert "--benchmark-only" in cmd and "--quick" in cmd and cmd[-2:] == ["-k", "numpy"]
    assert f"--benchmark-json={root / 'x.json'}" in cmd


def test_package_main_is_the_runner(monkeypatch):
    import scratchnet.bench as bench
    seen = []
    monkeypatch.setattr(run, "main", lambda argv=None: seen.append(argv) or 7)
    assert bench.main(["--quick"]) == 7 and seen == [["--quick"]]


def test_relative_report_dir_is_the_callers(monkeypatch, tmp_path, capsys):
    """pytest runs in the repository; a relative --report must still land in
    the caller's folder (the subprocess is replaced: nothing is benchmarked)."""
    import shutil
    import subprocess as sp
    from scratchnet.bench import run as bench_run
    sample = Path(__file__).parent / "data" / "bench_sample.json"
    seen = {}

    class FakePopen:
        returncode = 0

        def __init__(self, cmd, cwd=None, env=None, stdout=None, stderr=None):
            json_arg = [c for c in cmd if c.startswith("--benchmark-json=")][0]
            seen["json"] = Path(json_arg.split("=", 1)[1])
            shutil.copy(sample, seen["json"])

        def poll(self):
            return 0

    monkeypatch.setattr(sp, "Popen", FakePopen)
    monkeypatch.chdir(tmp_path)
    assert bench_run.main(["--quick", "--report", "out"]) == 0
    assert seen["json"] == tmp_path / "out" / "benchmarks.json"
    assert (tmp_path / "out" / "report.md").exists()


def test_cnn_section_from_its_cases():
    """The reference CNN's cases make their own section: the step against PyTorch
    and the GEMM floor, each layer against PyTorch, per-sample vs mini-batch."""
    def b(median, **info):
        return {"name": "x", "group": "g", "extra_info": info,
                "stats": {"median": median, "min": median, "max": median, "rounds": 3}}
    raw = {"benchmarks": [
        b(0.040, kind="cnn_step", impl="numba", batch_size=128),
        b(0.080, kind="cnn_step", impl="torch-cpu", batch_size=128),
        b(0.020, kind="cnn_floor", impl="numba", batch_size=128),
        b(0.002, kind="cnn_layer", impl="numba", layer="conv2", direction="forward"),
        b(0.008, kind="cnn_layer", impl="torch-cpu", layer="conv2", direction="forward"),
        b(0.001, kind="cnn_layer", impl="numba", layer="pool1", direction="backward"),
        b(2.0, kind="cnn_train", impl="numba", mode="per_sample", batch_size=32, samples=512),
        b(0.5, kind="cnn_train", impl="numba", mode="minibatch", batch_size=32, samples=512),
        b(0.3, kind="cnn_inference", impl="numba", batch_size=1024, samples=10_000),
        b(0.6, kind="cnn_inference", impl="torch-cpu", batch_size=1024, samples=10_000),
    ]}
    md = report.render_markdown(raw)
    assert "## 6. The reference CNN" in md
    steps = tables_after(md, "### One training step")
    numba = next(r for r in steps if r["implementation"] == "numba")
    close(numba["÷ PyTorch CPU"], 0.5)
    close(numba["× GEMM floor"], 2.0)
    layers = tables_after(md, "### Each layer")
    assert [(r["layer"], r["direction"], r["implementation"]) for r in layers] == [
        ("pool1", "backward", "numba"), ("conv2", "forward", "numba"),
        ("conv2", "forward", "PyTorch CPU")]
    close(layers[1]["÷ PyTorch CPU"], 0.25)
    ps = tables_after(md, "### Per-sample vs mini-batch")
    close(ps[0]["mini-batch speed-up"], 4.0)
    inf = tables_after(md, "### Inference")
    numba_inf = next(r for r in inf if r["implementation"] == "numba")
    close(numba_inf["µs/sample"], 30.0)
    close(numba_inf["÷ PyTorch CPU"], 0.5)
    assert "## 4. Inference" not in md          # the MLP's inference table stays empty
    assert "## 1. Per-sample" not in md          # the MLP's table stays empty
