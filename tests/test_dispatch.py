"""Runtime ISA choice, BNE_ISA, import hygiene and Ctrl-C, each in a fresh interpreter."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

import bne
from runner import run_python

ISAS = ["serial", "avx2", "avx512", "neon", "sve"]  # x86, then aarch64


def run_py(code, env_extra=None):
    """``python -c CODE`` with BNE_ISA cleared (the default kernel choice), then ``env_extra``."""
    return run_python(code, env={"BNE_ISA": None, **(env_extra or {})})


def test_available_isas_order_and_default_is_best():
    isas = bne.available_isas()
    assert isas[0] == "serial" and set(isas) <= set(ISAS)
    assert isas == sorted(isas, key=ISAS.index)
    out = run_py("import bne; print(bne.active_isa())")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == isas[-1]  # never silently at scalar speed


@pytest.mark.parametrize("isa", bne.available_isas())
def test_env_forces_isa(isa):
    out = run_py("import bne; print(bne.active_isa())", {"BNE_ISA": isa})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == isa


def test_env_unknown_or_unsupported_isa_is_a_clear_error():
    out = run_py("import bne", {"BNE_ISA": "avx9000"})
    assert out.returncode != 0
    assert "BNE_ISA: unknown ISA 'avx9000'; available: serial" in out.stderr
    missing = [i for i in ISAS if i not in bne.available_isas()]
    if missing:
        out = run_py("import bne", {"BNE_ISA": missing[0]})
        assert f"this CPU does not support ISA '{missing[0]}'" in out.stderr


def test_set_isa_switches_and_restores():
    out = run_py(
        "import bne\n"
        "for isa in bne.available_isas():\n"
        "    bne.set_isa(isa); assert bne.active_isa() == isa, isa\n"
        "print('ok')"
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_import_does_not_import_torch():
    out = run_py("import sys, bne; print('torch' in sys.modules, 'transformers' in sys.modules)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False False"


def test_ctrl_c_interrupts_a_long_search():
    code = (
        "import numpy as np, bne, sys, time\n"
        "x = np.random.default_rng(0).integers(0, 256, (400_000, 128), dtype=np.uint8)\n"
        "idx = bne.Index(1024); idx.add(x)\n"
        "print('ready', flush=True)\n"
        "t = time.perf_counter()\n"
        "try:\n"
        "    idx.search(x[:20000], 10)\n"
        "    print('finished', flush=True)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted %.3f' % (time.perf_counter() - t), flush=True)\n"
    )
    env = dict(os.environ)
    env.pop("BNE_ISA", None)
    p = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert p.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=180)
    finally:
        p.kill()
        p.wait()
        p.stdout.close()
        p.stderr.close()
    # 20000 queries x 400k codes take many seconds; the interrupt must land within a second.
    assert out.startswith("interrupted"), (out, err)
    assert float(out.split()[1]) < 5.0


def test_no_march_native_in_build():
    root = pathlib.Path(__file__).resolve().parents[1]
    for path in [root / "CMakeLists.txt", *root.joinpath("cpp").rglob("*")]:
        if path.is_file():
            assert "-march=native" not in path.read_text(errors="ignore"), path


def test_baseline_objects_have_no_wide_vector_instructions():
    """Only the ISA files may contain ymm/zmm code; everything else must run on any x86-64."""
    import shutil

    root = pathlib.Path(__file__).resolve().parents[1]
    objects = list(root.glob("build/**/bne_core.dir/**/*.o"))
    if not objects or not shutil.which("objdump"):
        pytest.skip("no build tree with object files here")
    for obj in objects:
        text = subprocess.run(["objdump", "-d", str(obj)], capture_output=True, text=True).stdout
        wide = "%ymm" in text or "%zmm" in text
        if "kernels_avx" in obj.name:
            assert wide, obj
        else:
            assert not wide, obj


def test_kernel_info_says_what_and_why():
    info = bne.kernel_info()
    assert info["isa"] == bne.active_isa()
    assert info["kernel"] in bne.available_kernels() == info["available"]
    assert info["kernel"].split("-")[0] == info["isa"]
    assert info["reason"] and isinstance(info["family"], int) and isinstance(info["model"], int)
    if info["isa"] == "avx512":  # the choice names the CPU and the calibration it rests on
        assert f"family {info['family']} model {info['model']}" in info["reason"]
        assert "calibration" in info["reason"]
    assert info["cores"] >= 1 and info["thread_cost_us"] > 0 and info["min_work_per_thread"] > 0


@pytest.mark.parametrize("kernel", bne.available_kernels())
def test_env_bne_kernel_forces_a_variant(kernel):
    out = run_py("import bne; i = bne.kernel_info(); print(i['kernel'], i['isa'], i['reason'])", {"BNE_KERNEL": kernel})
    assert out.returncode == 0, out.stderr
    name, isa, reason = out.stdout.split(" ", 2)
    assert name == kernel and isa == kernel.split("-")[0]
    assert reason.startswith(f"BNE_KERNEL={kernel}")


def test_env_bne_kernel_unknown_is_a_clear_error():
    out = run_py("import bne", {"BNE_KERNEL": "avx512-1024"})
    assert out.returncode != 0
    assert "BNE_KERNEL: unknown ISA 'avx512-1024'; available: serial" in out.stderr
    assert "kernels: serial" in out.stderr


def test_set_isa_takes_kernel_names():
    out = run_py(
        "import bne\n"
        "for k in bne.available_kernels():\n"
        "    bne.set_isa(k); i = bne.kernel_info(); assert i['kernel'] == k and bne.active_isa() == i['isa'], k\n"
        "print('ok')"
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_threads_clamped_to_the_cores():
    out = run_py(
        "import bne, os\n"
        "cores = len(os.sched_getaffinity(0))\n"
        "bne.set_num_threads(100_000)\n"
        "print(bne.get_num_threads() == cores == bne.kernel_info()['cores'])"
    )
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr
    # Under an affinity of one core, the default is one thread.
    if hasattr(os, "sched_setaffinity"):
        out = run_py(
            "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "import bne; print(bne.get_num_threads())"
        )
        assert out.returncode == 0 and out.stdout.strip() == "1", out.stderr
