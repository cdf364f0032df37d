"""Every kernels/*.cu file compiles with nvcc, for Ampere (sm_80) and Hopper (sm_90).

No GPU needed: ``nvcc --ptx`` only generates code. The explicit instantiations at
the end of each .cu file make nvcc emit every kernel, so the PTX must contain one
``.entry`` per name expression that the cupy backend asks NVRTC for.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from scratchnet.backends.cupy_ops import KERNEL_FILE, KERNEL_FILES, name_expressions

KERNEL_DIR = Path(__file__).resolve().parents[1] / "kernels"
SOURCES = sorted(KERNEL_DIR.glob("*.cu"))
NVCC = shutil.which("nvcc")
DEMANGLE = shutil.which("cu++filt") or shutil.which("c++filt")
ARCHS = ["sm_80", "sm_90"]

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH: install the "
                                                      "CUDA toolkit to compile the kernels")


@pytest.fixture(scope="module", params=ARCHS)
def ptx(request, tmp_path_factory):
    """{source name: PTX text}, compiled once per architecture per session."""
    arch = request.param
    out_dir = tmp_path_factory.mktemp(f"ptx_{arch}")
    result = {}
    for src in SOURCES:
        out = out_dir / f"{src.stem}.ptx"
        cmd = [NVCC, "--ptx", f"-arch={arch}", "-std=c++17", "-Werror", "all-warnings",
               str(src), "-o", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.fail(f"nvcc failed for {src.name} ({arch}):\n{' '.join(cmd)}\n"
                        f"{proc.stdout}{proc.stderr}")
        result[src.name] = out.read_text()
    return result


def entries(ptx_text):
    return re.findall(r"\.entry\s+([A-Za-z_][A-Za-z0-9_]*)\s*\(", ptx_text)


def test_there_are_kernel_sources():
    assert KERNEL_FILE in [s.name for s in SOURCES]
    assert set(KERNEL_FILES) <= {s.name for s in SOURCES}


def test_every_source_generates_code(ptx):
    for name, text in ptx.items():
        assert entries(text), f"{name}: no kernel entry in the PTX"


@pytest.mark.parametrize("source", KERNEL_FILES)
def test_every_name_expression_has_an_entry(ptx, source):
    mangled = entries(ptx[source])
    # bias_act<float> is mangled _Z8bias_actIfE...; softmax_xent_rows<float, long long>
    # _Z17softmax_xent_rowsIfxE...
    code = {"float": "f", "double": "d", "int": "i", "long long": "x", "unsigned char": "h"}
    for expr in name_expressions(source):
        base, targs = expr.rstrip(">").split("<")
        prefix = f"_Z{len(base)}{base}I" + "".join(code[t.strip()] for t in targs.split(","))
        assert any(m.startswith(prefix + "E") for m in mangled), \
            f"no PTX entry for {expr} (looked for {prefix}E...)"


@pytest.mark.skipif(DEMANGLE is None, reason="no c++filt/cu++filt to demangle PTX names")
@pytest.mark.parametrize("source", KERNEL_FILES)
def test_entries_demangle_to_the_name_expressions(ptx, source):
    mangled = entries(ptx[source])
    out = subprocess.run([DEMANGLE], input="\n".join(mangled), capture_output=True,
                         text=True, check=True).stdout.splitlines()
    names = {re.sub(r"^void\s+", "", line).split("(")[0].replace(" ", "") for line in out}
    assert names == {e.replace(" ", "") for e in name_expressions(source)}


@pytest.mark.parametrize("source", KERNEL_FILES)
def test_source_with_the_header_inlined_compiles(tmp_path, source):
    """What CupyOps hands NVRTC (activations.cuh inlined, since NVRTC reads no
    files) compiles on its own, away from the kernels/ folder, to the same entries."""
    from scratchnet.backends.cupy_ops import nvrtc_source

    src = tmp_path / source
    src.write_text(nvrtc_source(source))
    out = tmp_path / "inlined.ptx"
    cmd = [NVCC, "--ptx", f"-arch={ARCHS[0]}", "-std=c++17", "-Werror", "all-warnings",
           str(src), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
    assert len(entries(out.read_text())) == len(name_expressions(source))


# --------------------------------------------------------------------- NVRTC
def _nvrtc():
    """CuPy's NVRTC bindings when they and libnvrtc load (no GPU needed), else None."""
    try:
        from cupy_backends.cuda.libs import nvrtc
        nvrtc.getVersion()
    except Exception:
        return None
    return nvrtc


@pytest.mark.parametrize("source", KERNEL_FILES)
@pytest.mark.parametrize("arch", [a.replace("sm_", "compute_") for a in ARCHS])
def test_nvrtc_compiles_the_name_expressions(arch, source):
    """The exact path of cupy.RawModule: NVRTC (no host headers), -std=c++17, name
    expressions; every expression must lower to a mangled kernel name in the PTX."""
    nvrtc = _nvrtc()
    if nvrtc is None:
        pytest.skip("CuPy's NVRTC bindings or libnvrtc are not available "
                    "(pip install cupy-cuda13x nvidia-cuda-nvrtc)")
    from scratchnet.backends.cupy_ops import nvrtc_source

    prog = nvrtc.createProgram(nvrtc_source(source), source, [], [])
    try:
        for expr in name_expressions(source):
            nvrtc.addNameExpression(prog, expr)
        try:
            nvrtc.compileProgram(prog, ["-std=c++17", f"--gpu-architecture={arch}"])
        except nvrtc.NVRTCError as err:
            pytest.fail(f"NVRTC failed ({arch}): {err}\n{nvrtc.getProgramLog(prog)}")
        log = nvrtc.getProgramLog(prog).strip("\x00 \n")
        assert not log, f"NVRTC warnings ({arch}):\n{log}"
        ptx = nvrtc.getPTX(prog)
        ptx = ptx.decode() if isinstance(ptx, bytes) else ptx
        found = set(entries(ptx))
        for expr in name_expressions(source):
            assert nvrtc.getLoweredName(prog, expr) in found, expr
    finally:
        nvrtc.destroyProgram(prog)
