"""The package's import graph follows the data flow: no module imports a layer above its own (function-body
imports included), and the data-build workers never load the VLA stack (transformers)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import handvla

ROOT = Path(handvla.__file__).parent

#: rank of each top-level module or package of handvla; an import may only point to a lower rank
#: (same-rank peers do not import each other). See docs/architecture.md.
LAYERS: dict[str, int] = {
    "handvla": 0, "errors": 0,
    "atomic": 1, "config": 1, "stats": 1,
    "camera": 2, "video": 2, "train": 2,
    "hand": 3,
    "data": 4,
    "ingest": 5, "synth": 5, "language": 5,
    "tokenizer": 6,
    "vla": 7,
    "policy": 8,
    "robot": 9,
    "demo": 10,
    "commands": 11, "cli": 12, "__main__": 13,
}  # fmt: skip


def _top(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "handvla":
        return None
    return parts[1] if len(parts) > 1 else "handvla"


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            # `from handvla import video` names a module
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names if node.module == "handvla"]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
    return out


def test_every_module_has_a_layer():
    tops = {p.stem if p.is_file() else p.name for p in ROOT.iterdir() if (p.suffix == ".py" or (p / "__init__.py").is_file())}
    tops = {"handvla" if t == "__init__" else t for t in tops}
    assert tops <= set(LAYERS), f"give these a layer in LAYERS: {sorted(tops - set(LAYERS))}"


def test_no_import_runs_up_the_flow():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        src = _top(".".join(rel.parts).removesuffix(".__init__"))
        for line, module in _imports(path):
            dst = _top(module)
            if dst is None or dst == src or (src == "handvla" and path.name == "__init__.py"):
                continue
            if dst == "handvla":  # `from handvla import x`: the package itself, rank 0, or a listed module
                continue
            if LAYERS[dst] >= LAYERS[src]:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line} ({src}, layer {LAYERS[src]}) imports {module} (layer {LAYERS[dst]})")
    assert not bad, "imports that run up the flow or across peers:\n" + "\n".join(bad)


def test_data_build_workers_do_not_load_the_vla_stack():
    code = (
        "import sys\n"
        "import handvla.ingest.build, handvla.ingest.align, handvla.ingest.standardize, handvla.ingest.sources\n"
        "import handvla.language.annotate, handvla.language.instructions, handvla.synth.handworld\n"
        "heavy = sorted(m for m in ('transformers', 'handvla.vla', 'handvla.tokenizer', 'handvla.robot') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"the data build imports {out.stdout.strip()}"
