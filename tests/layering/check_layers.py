#!/usr/bin/env python3
"""check_layers.py - the core's layering rule, checked on what the compiler
built and on what the sources include (docs/architecture.md, "Layers").

core/ is six layers, lowest first:

    base < config < event < http < proxy < runtime

A file may call, reference or include only what its own layer or a lower
one defines. A lower layer reaches a higher one only through a table the
runtime fills in at start-up (runtime/wire.c). Inside http/, the request
layer (request.c) names no function of a protocol (http1.c, http2.c).

Usage:
  check_layers.py BUILD_DIR SOURCE_DIR     check the real build; exit 1 on
                                           any violation, listing each
  check_layers.py --self-test BUILD_DIR SOURCE_DIR
                                           prove the check can fail: add an
                                           object in base/ that calls a
                                           runtime function and a header in
                                           config/ that includes http/, and
                                           expect both to be reported
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

LAYERS = ["base", "config", "event", "http", "proxy", "runtime"]
RANK = {name: i for i, name in enumerate(LAYERS)}
# file -> files it must never name a symbol of (same layer, finer rule)
PROTOCOL_FREE = {"http/request.c": ["http/http1.c", "http/http2.c"]}


def objects(build_dir):
    """(unit, path) for every core object file: unit is 'layer/file.c'."""
    out = []
    for top in ("hxcore.dir", "heliosd.dir"):
        root = os.path.join(build_dir, "core", "CMakeFiles", top)
        for dirpath, _, files in os.walk(root):
            for f in files:
                if f.endswith(".c.o"):
                    path = os.path.join(dirpath, f)
                    unit = os.path.relpath(path, root)[: -len(".o")]
                    out.append((unit, path))
    return out


def nm(path, *flags):
    res = subprocess.run(["nm", *flags, path], capture_output=True, text=True, check=True)
    return res.stdout.splitlines()


def symbol_violations(objs):
    defined = {}
    for unit, path in objs:
        for line in nm(path, "--defined-only", "-g"):
            parts = line.split()
            if len(parts) == 3:
                defined[parts[2]] = unit
    bad = []
    for unit, path in objs:
        layer = unit.split("/")[0]
        if layer not in RANK:
            bad.append(f"{unit}: not in a layer folder ({', '.join(LAYERS)})")
            continue
        for line in nm(path, "-u"):
            sym = line.split()[-1]
            owner = defined.get(sym)
            if owner is None or owner == unit:
                continue
            olayer = owner.split("/")[0]
            if RANK.get(olayer, -1) > RANK[layer]:
                bad.append(f"{unit} ({layer}) uses {sym} from {owner} ({olayer}), a higher layer")
            if owner in PROTOCOL_FREE.get(unit, []):
                bad.append(f"{unit} uses {sym} from {owner}: the request layer names no protocol")
    return bad


INCLUDE = re.compile(r'^\s*#\s*include\s+"([a-z]+)/[^"]+"', re.M)


def include_violations(core_dir):
    bad = []
    for layer in os.listdir(core_dir):
        d = os.path.join(core_dir, layer)
        if not os.path.isdir(d):
            continue
        for f in sorted(os.listdir(d)):
            if not f.endswith((".c", ".h")):
                continue
            if layer not in RANK:
                bad.append(f"{layer}/{f}: not in a layer folder")
                continue
            with open(os.path.join(d, f), encoding="utf-8") as fh:
                text = fh.read()
            for inc in INCLUDE.findall(text):
                if inc in RANK and RANK[inc] > RANK[layer]:
                    bad.append(f"{layer}/{f} includes a {inc}/ header, a higher layer")
    return bad


def check(build_dir, core_dir):
    objs = objects(build_dir)
    if len(objs) < len(LAYERS):
        return [f"only {len(objs)} core objects under {build_dir}: build first"]
    return symbol_violations(objs) + include_violations(core_dir)


def self_test(build_dir, source_dir):
    tmp = tempfile.mkdtemp(prefix="layers-")
    try:
        core = os.path.join(tmp, "core")
        shutil.copytree(os.path.join(source_dir, "core"), core)
        fake_build = os.path.join(tmp, "build")
        shutil.copytree(os.path.join(build_dir, "core", "CMakeFiles"),
                        os.path.join(fake_build, "core", "CMakeFiles"),
                        ignore=shutil.ignore_patterns("*.d", "*.make", "*.txt", "*.cmake"))
        # a base/ object that calls the runtime
        src = os.path.join(tmp, "violation.c")
        with open(src, "w") as fh:
            fh.write("void hx_runtime_wire(void);\nvoid hx_violation(void) { hx_runtime_wire(); }\n")
        obj = os.path.join(fake_build, "core", "CMakeFiles", "hxcore.dir", "base", "violation.c.o")
        subprocess.run(["cc", "-c", src, "-o", obj], check=True)
        # a config/ header that includes an http/ one
        with open(os.path.join(core, "config", "violation.h"), "w") as fh:
            fh.write('#include "http/request.h"\n')
        bad = check(fake_build, core)
        want = ["base/violation.c (base) uses hx_runtime_wire from runtime/wire.c",
                "config/violation.h includes a http/ header"]
        missing = [w for w in want if not any(b.startswith(w) for b in bad)]
        for b in bad:
            print("reported:", b)
        if missing:
            print("NOT DETECTED:", *missing, sep="\n  ")
            return 1
        if len(bad) != len(want):
            print(f"expected exactly {len(want)} violations, got {len(bad)}")
            return 1
        print("self-test: both planted violations were reported, nothing else")
        return 0
    finally:
        shutil.rmtree(tmp)


def main(argv):
    if len(argv) == 4 and argv[1] == "--self-test":
        return self_test(argv[2], argv[3])
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    bad = check(argv[1], os.path.join(argv[2], "core"))
    for b in bad:
        print("layering violation:", b)
    if bad:
        return 1
    print(f"layers {' < '.join(LAYERS)}: no violation")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
