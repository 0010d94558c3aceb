"""The layers of docs/ARCHITECTURE.md, enforced: a module imports (at module level) only from its own layer or below.

An import inside a function is the documented way round a layer (a late import, e.g. simreg loading its
teacher through export); those are listed in LATE so that a new one is a decision, not an accident.
"""

import ast
from pathlib import Path

import leanssl

PACKAGE = Path(leanssl.__file__).parent
LAYERS = [  # bottom first; a module's layer is that of its longest listed prefix
    ["leanssl", "leanssl.errors", "leanssl.checks", "leanssl.options", "leanssl.device", "leanssl.accel",
     "leanssl.distributed"],
    ["leanssl.data", "leanssl.models", "leanssl.bank", "leanssl.runfolder", "leanssl.selection"],
    ["leanssl.methods"],
    ["leanssl.train"],
    ["leanssl.export", "leanssl.quantize", "leanssl.eval"],
    ["leanssl.embeddings", "leanssl.viz", "leanssl.bench", "leanssl.demo"],
    ["leanssl.cli_args", "leanssl.cli_tools", "leanssl.cli", "leanssl.__main__"],
]
LATE = {  # (importer, imported) pairs allowed only inside a function: each goes up a layer on purpose
    ("leanssl.methods.simreg", "leanssl.export"),         # the teacher: a run folder or an exported backbone
    ("leanssl.methods.simreg", "leanssl.eval.features"),  # the teacher's input at its own resolution
    ("leanssl.quantize", "leanssl.eval.features"),        # quantised models calibrate on extracted batches
}


def _layer(module: str) -> int:
    best = max((p for layer in LAYERS for p in layer if module == p or module.startswith(p + ".")), key=len)
    return next(i for i, layer in enumerate(LAYERS) if best in layer)


def _imports(path: Path, module: str):
    """(imported module, at module level?) for every leanssl import in the file."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body} | {id(n) for s in tree.body if isinstance(s, (ast.If, ast.Try))
                                        for n in ast.walk(s)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("leanssl"):
                yield name, id(node) in top


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        yield path, ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_module_imports_only_its_own_layer_or_below():
    wrong = []
    for path, module in _modules():
        for target, at_top in _imports(path, module):
            if _layer(target) > _layer(module) and (at_top or (module, _prefix(target)) not in LATE):
                wrong.append(f"{module} imports {target} ({'module level' if at_top else 'late, not in LATE'})")
    assert not wrong, "\n".join(wrong)


def _prefix(target: str) -> str:
    return next((imp for _, imp in LATE if target == imp or target.startswith(imp + ".")), target)


def test_evaluation_and_export_do_not_load_the_training_loop():
    import subprocess
    import sys

    code = ("import sys, leanssl.eval.evaluate, leanssl.export, leanssl.eval.finetune; "
            "print('leanssl.train.loop' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
