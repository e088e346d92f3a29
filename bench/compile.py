"""How fast Loom compiles a large config: 200 entities of 15-25 fields each.

Generates the config (deterministic: seeded RNG) as YAML files in a temporary directory, then in a
fresh Python process per repetition measures

* load + compile: ``compile_project`` (YAML parsing, schema validation, compiling to a Manifest)
* build_metadata: the SQLAlchemy tables
* build_models: the pydantic I/O models the REST API needs (informational: part of server start-up)
* peak memory: ``ru_maxrss`` of the process, and the tracemalloc peak of compile + metadata (separate run)

and prints the median of the repetitions. Target: load + compile + build_metadata < 2 s.

    .venv/bin/python bench/compile.py [--entities 200] [--repeat 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 2.0
SEED = 1234
SCALARS = ("string", "string", "text", "integer", "decimal", "money", "boolean", "date", "datetime", "enum",
           "enum", "multi_enum", "email", "phone", "url", "json")
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
         "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango")


# --- the generated config ----------------------------------------------------------------------------
def label(text: str) -> str:
    return f"{{en: {text.capitalize()}, zh: {text}}}"


def field_yaml(rng: random.Random, name: str, kind: str, entity: str, targets: list[str]) -> list[str]:
    lines = [f"      {name}:", f"        type: {kind}", f"        label: {label(name.replace('_', ' '))}"]
    if rng.random() < 0.3:
        lines.append(f"        help: {{en: Help text for {name}., zh: {name} 的说明。}}")
    if kind == "string":
        lines.append(f"        max_length: {rng.choice((50, 100, 200))}")
        if rng.random() < 0.15:
            lines.append("        indexed: true")
    elif kind in ("integer", "decimal", "money"):
        lines.append("        min: 0")
        if kind == "money":
            lines += ["        currency: CNY", "        precision: 18", "        scale: 2"]
    elif kind == "date" and rng.random() < 0.5:
        lines.append('        min: "1900-01-01"')
    elif kind in ("enum", "multi_enum"):
        lines.append("        options:")
        for option in rng.sample(WORDS, rng.randint(3, 8)):
            lines.append(f"          - {{value: {option}, label: {label(option)}}}")
    elif kind in ("ref", "refs"):
        lines += [f"        to: {rng.choice(targets)}", f"        related_name: {entity}_{name}"]
        if kind == "ref":
            lines.append(f"        on_delete: {rng.choice(('restrict', 'cascade', 'set_null'))}")
    elif kind == "boolean":
        lines.append("        default: false")
    return lines


def entity_yaml(rng: random.Random, index: int) -> str:
    name = f"entity_{index:03d}"
    earlier = [f"entity_{j:03d}" for j in range(index)]
    kinds = [rng.choice(SCALARS) for _ in range(rng.randint(15, 25) - 1)]
    if earlier:  # refs to earlier entities: one or two many-to-one, sometimes a many-to-many
        for k in range(rng.randint(1, 2)):
            kinds[k] = "ref"
        if rng.random() < 0.2:
            kinds[-1] = "refs"
    lines = [f"  {name}:", f"    label: {label(name)}", f"    description: Generated entity number {index}.",
             "    fields:", "      name:", "        type: string", "        required: true", "        max_length: 200",
             "        indexed: true"]
    names = ["name"]
    for k, kind in enumerate(kinds):
        fname = f"{kind}_{k}"
        names.append(fname)
        lines += field_yaml(rng, fname, kind, name, earlier)
    indexable = [n for n in names[1:] if n.split("_")[0] in ("string", "integer", "date", "enum", "ref")]
    if len(indexable) >= 2:
        lines.append("    indexes:")
        for _ in range(rng.randint(1, 2)):
            lines.append(f"      - fields: [{', '.join(rng.sample(indexable, 2))}]")
    return "entities:\n" + "\n".join(lines) + "\n"


def generate(directory: Path, entities: int) -> int:
    """Write loom.yaml + entities/*.yaml; return the number of fields."""
    rng = random.Random(SEED)
    (directory / "entities").mkdir(parents=True, exist_ok=True)
    (directory / "loom.yaml").write_text(
        "app:\n  name: Compile benchmark\n  locales: [en, zh]\n  timezone: Asia/Shanghai\n"
        "include:\n  - entities/*.yaml\ndatabase:\n  url: sqlite:///bench.db\n", encoding="utf-8")
    fields = 0
    for i in range(entities):
        text = entity_yaml(rng, i)
        fields += text.count("        type: ")
        (directory / "entities" / f"entity_{i:03d}.yaml").write_text(text, encoding="utf-8")
    return fields


# --- one measurement, in a fresh process --------------------------------------------------------------
def child(project: str, trace: bool) -> None:
    import resource
    import tracemalloc

    started = time.perf_counter()
    from loomcrm.engine.compiler import compile_project
    from loomcrm.generators.models import build_models
    from loomcrm.generators.tables import build_metadata

    out = {"import_s": time.perf_counter() - started,
           "rss_after_import_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if trace:
        tracemalloc.start()
    t0 = time.perf_counter()
    manifest, _ = compile_project(project)
    t1 = time.perf_counter()
    metadata = build_metadata(manifest)
    t2 = time.perf_counter()
    if trace:
        out["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    else:
        build_models(manifest)
        out.update(compile_s=t1 - t0, metadata_s=t2 - t1, models_s=time.perf_counter() - t2,
                   rss_peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    out.update(entities=len(manifest.entities), tables=len(metadata.tables),
               columns=sum(len(t.columns) for t in metadata.tables.values()))
    print(json.dumps(out))


def run_child(project: Path, trace: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", str(project)] + (["--trace"] if trace else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"compiling the generated config failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entities", type=int, default=200)
    p.add_argument("--repeat", type=int, default=3, help="fresh processes to time (default 3); the median is shown")
    p.add_argument("--keep", help="write the config to this directory and keep it")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child, args.trace)

    with tempfile.TemporaryDirectory(prefix="loom-compile-") as tmp:
        project = Path(args.keep or tmp)
        fields = generate(project, args.entities)
        print(f"config: {args.entities} entities, {fields} fields in {project}{'' if args.keep else ' (temporary)'}")
        runs = [run_child(project) for _ in range(args.repeat)]
        traced = run_child(project, trace=True)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    first = runs[0]
    total = statistics.median(r["compile_s"] + r["metadata_s"] for r in runs)
    print(f"schema: {first['entities']} entities, {first['tables']} tables (incl. join tables), "
          f"{first['columns']} columns")
    print(f"median of {args.repeat} fresh processes:")
    rows = [("import loomcrm", med("import_s"), "s"), ("load + compile (compile_project)", med("compile_s"), "s"),
            ("build_metadata", med("metadata_s"), "s"), ("load + compile + build_metadata", total, "s"),
            ("build_models (informational)", med("models_s"), "s"),
            ("peak RSS (ru_maxrss, whole process)", med("rss_peak_mb"), "MB"),
            ("  of which after imports", med("rss_after_import_mb"), "MB"),
            ("tracemalloc peak, compile + metadata", traced["tracemalloc_peak_mb"], "MB")]
    for name, value, unit in rows:
        print(f"  {name:<38}{value:>9.3f} {unit}" if unit == "s" else f"  {name:<38}{value:>9.1f} {unit}")
    print(f"target: load + compile + build_metadata < {TARGET_S:g} s: "
          + ("met" if total < TARGET_S else f"MISSED ({total:.2f} s)"))


if __name__ == "__main__":
    main()
