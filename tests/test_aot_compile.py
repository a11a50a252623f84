"""The GPU compile lane, on CPU: every Triton kernel compiled ahead of time for sm_90 and sm_80 at
its launchers' configurations within the compile budgets, and csrc compiled with nvcc.

``INFOGAIN_AOT_RESULTS=DIR`` makes the lane write ``aot-sm90.json`` / ``aot-sm80.json`` there
(``make test`` passes ``benches/results``); by default they go to a temporary folder.
"""
import json
import os
import subprocess
import sys
import warnings

import pytest

from infogain_kernels import _aot, _aot_csrc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytest.importorskip("triton")


def _lane_env():
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)   # the lane compiles real kernels
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "python_api"), env.get("PYTHONPATH", "")])
    return env


def test_every_triton_kernel_compiles_for_sm90_and_sm80_within_budget(tmp_path):
    out = os.path.abspath(os.environ.get("INFOGAIN_AOT_RESULTS") or str(tmp_path))
    # One process per target, side by side: the lane is CPU-bound compilation.
    runs = {target: subprocess.Popen([sys.executable, "-m", "infogain_kernels._aot", "--target", target, "--out", out],
                                     cwd=ROOT, env=_lane_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
            for target in _aot.TARGETS}
    try:
        outputs = {target: run.communicate(timeout=1800)[0] for target, run in runs.items()}
    finally:
        for run in runs.values():
            if run.poll() is None:
                run.kill()
    for target, run in runs.items():
        assert run.returncode == 0, f"compile lane failed for {target}:\n{outputs[target][-6000:]}"
    for target in _aot.TARGETS:
        with open(os.path.join(out, f"aot-{target}.json")) as f:
            result = json.load(f)
        records = result["configs"]
        kernels = {r["kernel"] for r in records}
        assert {"infogain_kernels._entropy_triton._row_pass_kernel",
                "infogain_kernels._nucleus_triton._partials_kernel",
                "infogain_kernels._lm_head_triton._lm_head_partial_kernel"} <= kernels
        for record in records:
            assert "error" not in record, record
            if record["known_failure"] is None:
                assert record["spill_instructions"] == record["stack_bytes"] == 0, record["name"]
                assert record["registers"] <= _aot.MAX_REGISTERS, record["name"]
        stale = set(_aot.KNOWN_FAILURES) - {r["kernel"] for r in records if r["known_failure"]}
        if stale:
            warnings.warn(f"KNOWN_FAILURES entries no longer needed (remove them): {sorted(stale)}")


def test_csrc_compiles_and_links_with_nvcc_for_sm80_and_sm90(tmp_path):
    nvcc = _aot_csrc.find_nvcc()
    if nvcc is None:
        warnings.warn("nvcc not found: csrc/*.cu was NOT compiled for sm_80/sm_90 in this run")
        pytest.skip("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
    try:
        result = _aot_csrc.compile_csrc(str(tmp_path), nvcc=nvcc)
    except subprocess.CalledProcessError as error:
        pytest.fail(f"nvcc failed: {' '.join(error.cmd)}\n{error.stdout}\n{error.stderr}"[-8000:])
    assert os.path.getsize(result["library"]) > 0
    assert result["kernels"], "no CUDA kernel in the linked library"
    for name, per_arch in result["kernels"].items():
        assert len(per_arch) == 2, f"{name}: expected sm_80 and sm_90 code, got {per_arch}"
        for usage in per_arch:
            assert usage["stack_bytes"] == usage["local_bytes"] == 0, f"{name} spills: {usage}"


# ---- the lane's own parts, on fixed inputs ---------------------------------------------------------

SASS = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;   /* 0x0 */
        /*0010*/                   LDG.E.U8 R4, desc[UR12][R4.64] ;   /* 0x0 */
        /*0020*/                   MOV R2, RZ ;   /* 0x0 */
        /*0030*/                   LDG.E.128 R8, desc[UR12][R2.64] ;   /* 0x0 */
        /*0040*/                   FADD R3, R3, R8 ;   /* 0x0 */
        /*0050*/                   NOP ;   /* 0x0 */
        /*0060*/              @!P0 BRA 0x30 ;   /* 0x0 */
        /*0070*/                   STL [R1], R3 ;   /* 0x0 */
        /*0080*/                   EXIT ;   /* 0x0 */
"""


def test_sass_main_loop_and_spills_are_read_from_the_listing():
    instructions = _aot.parse_sass(SASS)
    assert len(instructions) == 9
    assert _aot.sass_main_loop(instructions) == (3, 1)   # LDG, FADD, BRA (the NOP is not counted)


def test_ptx_load_widths():
    assert _aot._ptx_load_bytes("ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];") == 16
    assert _aot._ptx_load_bytes("@%p1 ld.global.b16 { %rs1 }, [ %rd2 + 0 ];") == 2
    assert _aot._ptx_load_bytes("ld.global.v2.b64 { %rd3, %rd4 }, [ %rd1 + 0 ];") == 16
    assert _aot._ptx_load_bytes("cp.async.cg.shared.global [ %r1 + 0 ], [ %rd1 + 0 ], 16, %r2;") == 16
    assert _aot._ptx_load_bytes("cp.async.cg.shared.global [ %r60 + 0 ], [ %rd15 + 0 ], 0x10, %r61;") == 16
    assert _aot._ptx_load_bytes("cp.async.wait_group 2;") is None
    assert _aot._ptx_load_bytes("st.global.b32 [ %rd1 + 0 ], { %r1 };") is None
    ptx = "\n".join(["$L__BB0_1:", "ld.global.b8 { %rs1 }, [ %rd1 + 0 ];", "bra.uni $L__BB0_2;",
                     "$L__BB0_2:", "ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];",
                     "@%p1 bra $L__BB0_2;", "@%p2 bra $L__BB0_1;"])
    assert _aot.ptx_main_loop_loads(ptx) == [16]   # the innermost loop


def test_launch_config_specialises_like_the_jit():
    from infogain_kernels._objective_triton import _masked_mean_objective_kernel

    config = _aot.launch_config("x", _masked_mean_objective_kernel,
                                dict(entropy_ptr="*fp32", keep_ptr="*u8", cost_ptr="*fp32", objective_ptr="*fp32",
                                     mean_ptr="*fp32", n_positions=1, HAS_COST=True, BLOCK_L=32), num_warps=4)
    assert config["signature"]["entropy_ptr"] == "*fp32:16"
    assert config["signature"]["n_positions"] == "constexpr" and config["constexprs"]["n_positions"] == 1
    assert config["constexprs"]["BLOCK_L"] == 32 and config["signature"]["HAS_COST"] == "constexpr"
    with pytest.raises(ValueError, match="missing"):
        _aot.launch_config("x", _masked_mean_objective_kernel, dict(entropy_ptr="*fp32"), num_warps=4)


def test_every_kernel_module_registers_its_kernels():
    configs, uncovered = _aot.discover()
    assert not uncovered, f"kernels without an aot_configs() entry: {uncovered}"
    assert all(c["name"] and c["num_warps"] >= 1 for c in configs)
