"""``scratchnet bench``: stops at once, in one line, when it cannot run; reports
progress in clean lines; its output paths are checked before anything runs."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import scratchnet
from scratchnet.bench import run
from scratchnet.cli import main

REPO = Path(scratchnet.__file__).resolve().parents[1]


@pytest.fixture
def no_run(monkeypatch):
    """Fail the test if the benchmark subprocess is started."""
    def refuse(*args, **kwargs):
        raise AssertionError("the benchmarks were started")
    monkeypatch.setattr(subprocess, "Popen", refuse)


def one_line_error(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("scratchnet bench: error: "), err
    return lines[0]


def fake_checkout(root, name="scratchnet"):
    (root / "benchmarks").mkdir(parents=True)
    (root / "benchmarks" / "conftest.py").write_text("")
    (root / "pyproject.toml").write_text(f'[project]\nname = "{name}"\n')
    return root


# --- no suite: one line, at once ------------------------------------------------

def test_without_the_suite_it_says_how_to_get_it(monkeypatch, tmp_path, capsys, no_run):
    monkeypatch.setattr(run, "find_benchmarks", lambda: (None, [tmp_path / "benchmarks"]))
    line = one_line_error(capsys, ["bench", "--quick", "--report", str(tmp_path / "r")])
    assert "not installed with the package" in line and "source checkout" in line
    assert "clone the scratchnet repository" in line and "--from-json" in line
    assert not (tmp_path / "r").exists()


def test_an_installed_copy_finds_no_suite_beside_it(monkeypatch, tmp_path):
    site = tmp_path / "site-packages"
    fake_checkout(site, name="someone-elses-project")     # a stray benchmarks/ folder
    monkeypatch.setattr(run, "__file__", str(site / "scratchnet" / "bench" / "run.py"))
    monkeypatch.chdir(tmp_path)
    bench, looked = run.find_benchmarks()
    assert bench is None and site / "benchmarks" in looked


def test_an_installed_copy_uses_the_checkout_it_runs_in(monkeypatch, tmp_path):
    monkeypatch.setattr(run, "__file__",
                        str(tmp_path / "site-packages" / "scratchnet" / "bench" / "run.py"))
    clone = fake_checkout(tmp_path / "clone")
    monkeypatch.chdir(clone)
    assert run.find_benchmarks() == (clone / "benchmarks", clone)


def test_the_checkout_suite_is_found():
    bench, root = run.find_benchmarks()
    assert bench == REPO / "benchmarks" and root == REPO


# --- options and output paths, before anything runs -------------------------------

def test_bad_option_is_one_line(capsys, no_run):
    assert "unrecognized arguments: --fast" in one_line_error(capsys, ["bench", "--fast"])


def test_report_into_an_existing_file(tmp_path, capsys, no_run):
    target = tmp_path / "report"
    target.write_text("")
    line = one_line_error(capsys, ["bench", "--report", str(target)])
    assert "--report" in line and "is an existing file, not a folder" in line


def test_json_that_is_a_folder(tmp_path, capsys, no_run):
    line = one_line_error(capsys, ["bench", "--json", str(tmp_path)])
    assert "--json" in line and "is not a file name" in line


def test_json_below_a_file(tmp_path, capsys, no_run):
    (tmp_path / "f").write_text("")
    line = one_line_error(capsys, ["bench", "--json", str(tmp_path / "f" / "b.json")])
    assert "--json" in line and "is an existing file, not a folder" in line


def test_from_json_report_into_an_existing_file(tmp_path, capsys):
    target = tmp_path / "report"
    target.write_text("")
    sample = Path(__file__).parent / "data" / "bench_sample.json"
    line = one_line_error(capsys, ["bench", "--from-json", str(sample), "--report", str(target)])
    assert "is an existing file, not a folder" in line


# --- progress ---------------------------------------------------------------------

TINY_SUITE = textwrap.dedent("""
    import pytest

    def test_add(benchmark):
        benchmark.pedantic(lambda: 1 + 1, rounds=2, iterations=1)

    def test_mul(benchmark):
        benchmark.pedantic(lambda: 2 * 3, rounds=2, iterations=1)

    @pytest.mark.skip(reason="not here")
    def test_skipped(benchmark):
        pass
""")


def test_progress_is_one_clean_line_per_benchmark_in_a_log(monkeypatch, tmp_path, capsys):
    pytest.importorskip("pytest_benchmark")
    checkout = fake_checkout(tmp_path / "checkout")
    (checkout / "benchmarks" / "test_tiny.py").write_text(TINY_SUITE)
    monkeypatch.setattr(run, "find_benchmarks", lambda: (checkout / "benchmarks", checkout))
    monkeypatch.setenv("PYTHONPATH", str(REPO))     # the child loads the progress plugin
    rendered = []      # the report is tested elsewhere; its machine survey takes seconds
    monkeypatch.setattr(run, "_render", lambda path, report_dir: rendered.append(path) or 0)
    assert run.main(["--json", str(tmp_path / "out" / "b.json")]) == 0
    assert rendered == [tmp_path / "out" / "b.json"]
    out, err = capsys.readouterr()
    lines = err.splitlines()
    for i, (outcome, name) in enumerate([("passed", "test_add"), ("passed", "test_mul"),
                                         ("skipped", "test_skipped")]):
        assert any(x.startswith(f"scratchnet bench: [{i + 1}/3] {outcome}")
                   and f"test_tiny.py::{name}" in x for x in lines), err
    assert "\r" not in out + err
    assert all(x == x.rstrip() for x in (out + err).splitlines())
    assert "2 passed, 1 skipped" in out                      # pytest's summary line
    assert (tmp_path / "out" / "pytest.log").read_text().count("test_tiny.py") >= 1
    assert (tmp_path / "out" / "b.json").is_file()


def test_progress_bar_on_a_terminal(monkeypatch):
    """What the runner draws on a terminal: tqdm's bar (carriage returns and all)."""
    import io

    from scratchnet._progress import Progress
    pytest.importorskip("tqdm")
    stream = io.StringIO()
    monkeypatch.setattr(stream, "isatty", lambda: True, raising=False)
    with Progress(2, unit="benchmark", file=stream) as bar:
        assert bar.has_bar
        bar.update(1, line="never printed on a terminal")
        bar.update(1)
    assert "2/2" in stream.getvalue() and "never printed" not in stream.getvalue()


def test_plain_progress_lines(capsys):
    from scratchnet._progress import Progress, plural
    with Progress(2, file=sys.stderr) as bar:
        assert not bar.has_bar                      # capsys' stderr is not a terminal
        bar.update(1, line="first   ")
        bar.note("a note\n")
        bar.update(1)                               # no line: nothing printed
    assert capsys.readouterr().err == "first\na note\n"
    assert (plural(1, "epoch"), plural(2, "epoch"), plural(0, "thread")) == \
        ("1 epoch", "2 epochs", "0 threads")
