"""Ahead-of-time compile lane: every Triton kernel, at the configurations its launcher picks,
compiled for real GPUs on a machine without one.

Registry. Every module of :mod:`infogain_kernels` that defines ``@triton.jit`` kernels exposes
``aot_configs() -> list[dict]``; each dict describes one launch configuration:

* ``name``: what the configuration is, e.g. ``"row_stats bf16 V=126464"``;
* ``kernel``: the ``JITFunction``;
* ``signature``: argument name -> Triton type (``"*bf16"``, ``"i32"``, ``"fp32"``, ``"constexpr"``);
  a ``":16"`` suffix says the value is a multiple of 16 (16-byte aligned pointers), as Triton's own
  launcher specialises it;
* ``constexprs``: name -> value for every ``"constexpr"`` argument;
* ``num_warps``, ``num_stages``;
* optionally ``elements_per_iteration`` (logits one iteration of the main vocabulary loop covers,
  whole program) and ``bytes_per_element`` (default: the element size of the first pointer).

The dicts come from the same config-selection functions the launchers use (block size, warps,
split factor), called at LLaDA / Dream / SDAR shapes (:data:`MODEL_VOCABS`) and each dtype;
:func:`launch_config` turns a launcher-style argument list into one, specialising the arguments
as Triton's JIT does (integers equal to 1 become constants, multiples of 16 and tensor pointers
get the divisibility hint).

The lane (:func:`run`, ``python -m infogain_kernels._aot``) imports every module, compiles every
configuration for sm_90 and sm_80 with ``triton.compile`` and the ptxas Triton bundles, and reads
the result back with ``cuobjdump``:

* ``registers``, ``stack_bytes``, ``local_bytes``, ``shared_bytes`` (resource usage of the cubin);
* ``spill_instructions``: local-memory loads and stores (``LDL`` / ``STL``) in the SASS. A spill is
  any of these or a non-zero stack frame;
* ``main_loop``: the first innermost loop (a backward branch with no other backward branch inside)
  that reads global memory, found separately in the PTX and in the SASS.
  ``vector16`` is True when every global load in that PTX loop moves 16 bytes per thread
  (``ld.global.v4.b32``, ``.v2.b64``, ``.v8.b16``, ``cp.async ... 16``); ``sass_instructions``
  counts the SASS instructions of the loop body (NOPs excluded), which every thread executes once
  per iteration; ``instructions_per_element = sass_instructions * threads / elements_per_iteration``
  (thread instructions per logit) and ``instructions_per_byte`` divides that by the logit size.

Failures: a compile error, any spill, more than :data:`MAX_REGISTERS` registers per thread (so
that two 8-warp programs fit per SM), or more than :data:`MAX_INSTRUCTIONS_PER_BYTE` instructions
per byte read in a main loop (issue 11's memory-bound budget, the H100's fp32 balance of about
67 TFLOP/s over 3.35 TB/s; at one instruction per lane per clock its issue rate balances nearer 10
thread instructions per byte, so a kernel close to 20 is not memory-bound yet). The loop count
takes every instruction in the loop's address range, rarely taken branches included, so it is an
upper bound. :data:`KNOWN_FAILURES` lists kernels, each with the budgets it may still break, that
are being replaced; their records are kept and marked. Nothing is cached between runs: each run
compiles into a fresh Triton cache directory.

``csrc/`` is compiled with nvcc by the lane's CUDA half, :mod:`._aot_csrc`.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Dict, Iterable, List, Optional

MODEL_VOCABS = {"llada": 126464, "dream": 151936, "sdar": 152064}
"""Vocabulary widths the configurations are generated at."""
DTYPES = ("bf16", "fp16", "fp32")
TARGETS = {"sm90": ("cuda", 90, 32), "sm80": ("cuda", 80, 32)}
MAX_REGISTERS = 128
MAX_INSTRUCTIONS_PER_BYTE = 20.0
DEFAULT_NUM_STAGES = 3   # what a Triton launch uses on NVIDIA GPUs when none is given

KNOWN_FAILURES: dict = {
    # kernel qualname -> (budgets it may break for now, why). Remove an entry with its kernel.
}

_ELEMENT_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "fp64": 8, "i1": 1, "i8": 1, "u8": 1, "i16": 2,
                  "i32": 4, "u32": 4, "i64": 8, "u64": 8}


# ----------------------------------------------------------------------------- registry helpers


def launch_config(name: str, kernel, args: Dict[str, object], *, num_warps: int,
                  num_stages: int = DEFAULT_NUM_STAGES, elements_per_iteration: Optional[int] = None,
                  bytes_per_element: Optional[int] = None) -> dict:
    """A registry dict for launching ``kernel`` with ``args`` (every parameter, by name).

    Values: a pointer argument is its type string (``"*bf16"``, taken 16-byte aligned as torch
    allocations are); a Python int / float / bool is specialised as Triton's JIT does; parameters
    annotated ``tl.constexpr`` take their value as is.
    """
    parameters = inspect.signature(kernel.fn).parameters
    params = list(parameters)
    missing = [p for p in params if p not in args]
    extra = [a for a in args if a not in params]
    if missing or extra:
        raise ValueError(f"{name}: arguments missing {missing} / unknown {extra} for {kernel.fn.__name__}")
    # From the annotations (not JITFunction.params) so that interpreted kernels can be described too.
    constexpr_params = {name for name, p in parameters.items() if "constexpr" in str(p.annotation)}
    signature, constexprs = {}, {}
    for param in params:
        value = args[param]
        if param in constexpr_params or value is None:
            signature[param], constexprs[param] = "constexpr", value
        elif isinstance(value, str):
            if not value.startswith("*"):
                raise ValueError(f"{name}: {param}={value!r} is not a pointer type")
            signature[param] = value if ":" in value else value + ":16"
        elif isinstance(value, bool):
            signature[param] = "i1"
        elif isinstance(value, int):
            if value == 1:
                signature[param], constexprs[param] = "constexpr", 1
            else:
                kind = "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"
                signature[param] = kind + (":16" if value % 16 == 0 else "")
        elif isinstance(value, float):
            signature[param] = "fp32"
        else:
            raise TypeError(f"{name}: cannot specialise {param}={value!r}")
    config = dict(name=name, kernel=kernel, signature=signature, constexprs=constexprs,
                  num_warps=num_warps, num_stages=num_stages)
    if elements_per_iteration is not None:
        config["elements_per_iteration"] = int(elements_per_iteration)
    if bytes_per_element is not None:
        config["bytes_per_element"] = int(bytes_per_element)
    return config


def kernel_modules() -> List[str]:
    """Every module of the package (each is imported and searched for kernels)."""
    import infogain_kernels

    return sorted(f"infogain_kernels.{m.name}" for m in pkgutil.iter_modules(infogain_kernels.__path__)
                  if not m.name.startswith(("_C", "_aot")))


def _is_kernel(fn, jit_functions) -> bool:
    """A launched kernel, not a device helper: helpers return a value, or are called by another
    jit function of their module (``jit_functions``)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn.fn)))
    if any(isinstance(node, ast.Return) and node.value is not None for node in ast.walk(tree)):
        return False
    name = fn.fn.__name__
    for other in jit_functions:
        if other is fn:
            continue
        calls = ast.walk(ast.parse(textwrap.dedent(inspect.getsource(other.fn))))
        if any(isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name
               for node in calls):
            return False
    return True


def discover(modules: Optional[Iterable[str]] = None):
    """``(configs, uncovered)``: every module's ``aot_configs()``, and the kernels no config covers."""
    from triton.runtime.jit import KernelInterface   # JITFunction, or InterpretedFunction

    configs, uncovered = [], []
    for module_name in modules if modules is not None else kernel_modules():
        module = importlib.import_module(module_name)
        jit_functions = [obj for obj in vars(module).values()
                         if isinstance(obj, KernelInterface) and obj.fn.__module__ == module_name]
        kernels = {f"{module_name}.{obj.fn.__name__}": obj for obj in jit_functions if _is_kernel(obj, jit_functions)}
        if not kernels:
            continue
        if not hasattr(module, "aot_configs"):
            uncovered.extend(f"{k} (module has no aot_configs())" for k in sorted(kernels))
            continue
        module_configs = module.aot_configs()
        covered = {_qualname(c["kernel"]) for c in module_configs}
        uncovered.extend(sorted(set(kernels) - covered))
        configs.extend(module_configs)
    return configs, uncovered


def _qualname(kernel) -> str:
    return f"{kernel.fn.__module__}.{kernel.fn.__name__}"


def _dedupe(configs):
    """One compile per distinct (kernel, signature, constants, warps, stages); names are merged."""
    unique: Dict[str, dict] = {}
    for config in configs:
        key = json.dumps([_qualname(config["kernel"]), config["signature"], repr(sorted(config["constexprs"].items())),
                          config["num_warps"], config["num_stages"], config.get("elements_per_iteration")],
                         sort_keys=True)
        if key in unique:
            unique[key]["names"].append(config["name"])
        else:
            unique[key] = dict(config, names=[config["name"]])
    return list(unique.values())


# ----------------------------------------------------------------------------- compile + inspect


def cuobjdump_path() -> str:
    """The cuobjdump Triton bundles (same release as its ptxas), else one on PATH / in CUDA_HOME."""
    try:
        import triton.backends.nvidia as nvidia

        bundled = os.path.join(os.path.dirname(nvidia.__file__), "bin", "cuobjdump")
        if os.path.exists(bundled):
            return bundled
    except ImportError:
        pass
    for candidate in (shutil.which("cuobjdump"),
                      os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "cuobjdump")):
        if candidate and os.path.exists(candidate):
            return candidate
    raise RuntimeError("cuobjdump not found (neither bundled with triton nor on PATH)")


def _compile(config: dict, target):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = config["kernel"]
    names = list(inspect.signature(kernel.fn).parameters)
    signature = {k: v.split(":")[0] for k, v in config["signature"].items()}
    attrs = {(names.index(k),): [["tt.divisibility", 16]] for k, v in config["signature"].items()
             if v.endswith(":16")}
    source = ASTSource(fn=kernel, signature=signature, constexprs=dict(config["constexprs"]), attrs=attrs)
    return triton.compile(source, target=GPUTarget(*target),
                          options={"num_warps": config["num_warps"], "num_stages": config["num_stages"]})


_SASS_LINE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+([^;]*);")
RESOURCE_USAGE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def parse_sass(sass: str):
    """``[(address, instruction text)]`` of a ``cuobjdump -sass`` listing."""
    return [(int(m.group(1), 16), m.group(2).strip()) for m in map(_SASS_LINE.match, sass.splitlines()) if m]


def _innermost_loops(branches):
    """``branches``: [(start, end)] with start <= end, a backward jump from end to start."""
    return [(s, e) for s, e in branches
            if not any((s2, e2) != (s, e) and s <= s2 and e2 <= e for s2, e2 in branches)]


def sass_main_loop(instructions):
    """(instructions in the body, global loads in it) of the first innermost loop that loads from
    global memory, or None."""
    branches = []
    for address, text in instructions:
        m = re.search(r"\bBRA(?:\.\w+)*\s+(0x[0-9a-f]+|`?\(?\.?L_x_\d+)", text)
        if m and m.group(1).startswith("0x") and int(m.group(1), 16) <= address:
            branches.append((int(m.group(1), 16), address))
    for start, end in sorted(_innermost_loops(branches)):
        body = [t for a, t in instructions if start <= a <= end and not t.split()[0].startswith("NOP")]
        loads = [t for t in body if re.search(r"\bLDG(STS)?\b|\bLDG\.", t) or "UBLKCP" in t or "UTMALDG" in t]
        if loads:
            return len(body), len(loads)
    return None


_PTX_LOAD = re.compile(r"\b(ld\.global[\w.]*|cp\.async[\w.:]*)\s")


def _ptx_load_bytes(line: str) -> Optional[int]:
    m = _PTX_LOAD.search(line)
    if not m:
        return None
    op = m.group(1)
    if op.startswith("cp.async"):
        size = re.search(r",\s*(0x[0-9a-fA-F]+|\d+)\s*[,;]", line)   # ptxas accepts hex or decimal
        return int(size.group(1), 0) if size else None
    vec = re.search(r"\.v(\d+)\.", op)
    width = re.search(r"\.[busf](8|16|32|64|128)\b", op)
    return (int(vec.group(1)) if vec else 1) * (int(width.group(1)) // 8 if width else 4)


def ptx_main_loop_loads(ptx: str) -> Optional[List[int]]:
    """Bytes of each global load in the first innermost PTX loop that has one (None: no such loop)."""
    lines = ptx.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := re.match(r"^\s*(\$L__\w+):", line))}
    branches = []
    for i, line in enumerate(lines):
        m = re.search(r"\bbra(?:\.uni)?\s+(\$L__\w+);", line)
        if m and labels.get(m.group(1), i + 1) <= i:
            branches.append((labels[m.group(1)], i))
    for start, end in sorted(_innermost_loops(branches)):
        sizes = [b for b in (_ptx_load_bytes(line) for line in lines[start:end + 1]) if b is not None]
        if sizes:
            return sizes
    return None


def all_ptx_load_bytes(ptx: str) -> Dict[str, int]:
    """Histogram (bytes per thread -> count) of the global loads in the whole PTX."""
    histogram: Dict[str, int] = {}
    for line in ptx.splitlines():
        b = _ptx_load_bytes(line)
        if b is not None:
            histogram[str(b)] = histogram.get(str(b), 0) + 1
    return histogram


def inspect_compiled(config: dict, compiled, workdir: str) -> dict:
    """Registers, spills, shared memory, loads and loop cost of one compiled configuration."""
    cubin_path = os.path.join(workdir, "kernel.cubin")
    with open(cubin_path, "wb") as f:
        f.write(compiled.asm["cubin"])
    tool = cuobjdump_path()
    usage = subprocess.run([tool, "-res-usage", cubin_path], capture_output=True, text=True, check=True).stdout
    sass = subprocess.run([tool, "-sass", cubin_path], capture_output=True, text=True, check=True).stdout
    m = RESOURCE_USAGE.search(usage)
    if m is None:
        raise RuntimeError(f"cannot read the resource usage from cuobjdump:\n{usage}")
    registers, stack, shared, local = (int(g) for g in m.groups())
    instructions = parse_sass(sass)
    spill_instructions = sum(1 for _, t in instructions if re.search(r"\b(LDL|STL)\b", t))
    ptx = compiled.asm["ptx"]
    record = dict(registers=registers, stack_bytes=stack, local_bytes=local, shared_bytes=shared,
                  spill_instructions=spill_instructions, global_load_bytes=all_ptx_load_bytes(ptx),
                  sass_total_instructions=len(instructions))
    loop_loads = ptx_main_loop_loads(ptx)
    loop = sass_main_loop(instructions)
    main_loop = None
    if loop_loads is not None or loop is not None:
        main_loop = dict(ptx_load_bytes=loop_loads,
                         vector16=bool(loop_loads) and all(b == 16 for b in loop_loads))
        if loop is not None:
            main_loop.update(sass_instructions=loop[0], sass_global_loads=loop[1])
            per_iteration = config.get("elements_per_iteration")
            if per_iteration:
                threads = 32 * config["num_warps"]
                element_bytes = config.get("bytes_per_element") or _first_pointer_bytes(config["signature"])
                per_element = loop[0] * threads / per_iteration
                main_loop.update(elements_per_iteration=per_iteration, bytes_per_element=element_bytes,
                                 instructions_per_element=round(per_element, 3),
                                 instructions_per_byte=round(per_element / element_bytes, 3))
    record["main_loop"] = main_loop
    return record


def _first_pointer_bytes(signature: Dict[str, str]) -> int:
    for value in signature.values():
        if value.startswith("*"):
            return _ELEMENT_BYTES[value[1:].split(":")[0]]
    return 4


def budget_failures(record: dict):
    """What breaks the compile budgets in one record: [(kind, message)], kind "compile", "spills",
    "registers" or "instructions" (empty: within budget)."""
    if "error" in record:
        return [("compile", f"compile error: {record['error'].splitlines()[-1] if record['error'] else '?'}")]
    failures = []
    if record["spill_instructions"] or record["stack_bytes"] or record["local_bytes"]:
        failures.append(("spills", f"spills ({record['spill_instructions']} LDL/STL, stack {record['stack_bytes']} B)"))
    if record["registers"] > MAX_REGISTERS:
        failures.append(("registers", f"{record['registers']} registers > {MAX_REGISTERS}"))
    loop = record.get("main_loop") or {}
    if loop.get("instructions_per_byte", 0) > MAX_INSTRUCTIONS_PER_BYTE:
        failures.append(("instructions",
                         f"{loop['instructions_per_byte']} instructions/byte > {MAX_INSTRUCTIONS_PER_BYTE}"))
    return failures


def compile_one(config: dict, target_name: str, workdir: str) -> dict:
    record = dict(name=config["names"][0], also=config["names"][1:], kernel=_qualname(config["kernel"]),
                  target=target_name, num_warps=config["num_warps"], num_stages=config["num_stages"],
                  constexprs={k: v for k, v in config["constexprs"].items()},
                  signature=config["signature"])
    try:
        compiled = _compile(config, TARGETS[target_name])
        record.update(inspect_compiled(config, compiled, workdir))
    except Exception as exc:  # a compile error is a result of the lane, reported per configuration
        record["error"] = f"{type(exc).__name__}: {exc}"
    failures = budget_failures(record)
    record["failures"] = [text for _, text in failures]
    allowed, why = KNOWN_FAILURES.get(record["kernel"], (set(), None))
    record["known_failure"] = why if failures and all(kind in allowed for kind, _ in failures) else None
    return record


# ----------------------------------------------------------------------------- the lane


def run(out_dir: Optional[str], targets: Iterable[str] = tuple(TARGETS), modules=None, verbose=True) -> dict:
    """Compile every registered configuration for ``targets``; write ``aot-<target>.json`` into
    ``out_dir`` (unless None). Returns ``{"records": [...], "failures": [...], "uncovered": [...]}``
    where ``failures`` excludes :data:`KNOWN_FAILURES`."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("the compile lane needs real Triton kernels: unset TRITON_INTERPRET")
    import triton

    configs, uncovered = discover(modules)
    configs = _dedupe(configs)
    records = []
    with tempfile.TemporaryDirectory(prefix="infogain-aot-") as workdir:
        # A fresh cache: a cached kernel could hide a compile failure of the current sources.
        os.environ["TRITON_CACHE_DIR"] = os.path.join(workdir, "cache")
        for target_name in targets:
            target_records = [compile_one(c, target_name, workdir) for c in configs]
            records.extend(target_records)
            if out_dir is not None:
                os.makedirs(out_dir, exist_ok=True)
                with open(os.path.join(out_dir, f"aot-{target_name}.json"), "w") as f:
                    json.dump(dict(target=target_name, triton=triton.__version__,
                                   budgets=dict(max_registers=MAX_REGISTERS,
                                                max_instructions_per_byte=MAX_INSTRUCTIONS_PER_BYTE,
                                                spills=0),
                                   configs=target_records), f, indent=1)
                    f.write("\n")
    failures = [f"{r['target']} {r['name']}: {'; '.join(r['failures'])}" for r in records
                if r["failures"] and not r["known_failure"]]
    failures += [f"kernel {k} has no aot_configs() entry" for k in uncovered]
    if verbose:
        print(format_table(records))
    return dict(records=records, failures=failures, uncovered=uncovered)


def format_table(records) -> str:
    lines = [f"{'target':6} {'configuration':58} {'regs':>4} {'spill':>5} {'smem':>6} {'vec16':>5} "
             f"{'ins/B':>6}  status"]
    for r in records:
        loop = r.get("main_loop") or {}
        status = "ok" if not r["failures"] else ("known: " if r["known_failure"] else "FAIL: ") + "; ".join(r["failures"])
        lines.append(f"{r['target']:6} {r['name'][:58]:58} {r.get('registers', '-'):>4} "
                     f"{r.get('spill_instructions', '-'):>5} {r.get('shared_bytes', '-'):>6} "
                     f"{str(loop.get('vector16', '-')):>5} {loop.get('instructions_per_byte', '-'):>6}  {status}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None,
                        help="folder for aot-<target>.json (default: print only, write nothing)")
    parser.add_argument("--target", action="append", choices=sorted(TARGETS),
                        help="compile for this target only (repeatable; default: all)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    result = run(args.out, targets=args.target or tuple(TARGETS))
    print(f"\ncompile lane: {time.perf_counter() - started:.0f} s")
    if result["failures"]:
        print("\nFAILED:\n  " + "\n  ".join(result["failures"]), file=sys.stderr)
        return 1
    print(f"\n{len(result['records'])} configurations compiled within budget")
    return 0


if __name__ == "__main__":
    sys.exit(main())
