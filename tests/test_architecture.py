"""The package's structure: stages built by registries, a new variant or head is one class + one registration,
imports point toward the meta-architecture only and have no cycle, and the sources cite nothing a reader of the
repository cannot open."""
import ast
import re
import subprocess
from pathlib import Path

import pytest
import torch
from detectron2.config import configurable
from detectron2.modeling import build_model
from torch import nn

from conftest import REPO, tiny_cfg

from sam_mi.modeling.prompter import TSPP_HEAD_REGISTRY
from sam_mi.modeling.sam import MASK_GENERATOR_REGISTRY, mask_generator_args, register_mask_generator

PACKAGE = Path(REPO) / "sam_mi"


class ToyMaskGenerator(nn.Module):
    """Answers every prompt with the left half of the image: enough to see its masks reach DMI."""

    def encode(self, images: torch.Tensor, use_cache: bool = False) -> torch.Tensor:
        return images.new_zeros(images.shape[0], 1, 1, 1)

    def generate(self, embedding, points, image_size, out_size):
        masks = torch.zeros(1, *out_size, dtype=torch.bool)
        masks[:, :, : out_size[1] // 2] = True
        return masks, torch.ones(1)


@pytest.fixture
def toy_variant():
    @register_mask_generator("toy")
    @configurable(from_config=mask_generator_args)
    def build_toy(**kwargs) -> ToyMaskGenerator:
        return ToyMaskGenerator()

    yield "toy"
    MASK_GENERATOR_REGISTRY._obj_map.pop("toy")


def test_a_new_sam_variant_is_one_class_and_one_registration(toy_variant, synthetic_root):
    model = build_model(tiny_cfg(opts=["MODEL.SAM_MI.SAM.VARIANT", toy_variant])).eval()
    assert isinstance(model.mask_generator, ToyMaskGenerator)
    out = model([{"image": torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)}])[0]["sam_mi"]
    assert out["num_sam_masks"] == 1 and out["num_masks"] == 1 and out["injected"]


def test_unknown_variant_lists_the_registered_ones(synthetic_root):
    with pytest.raises(ValueError, match=r"registered: \[.*'fast_sam'.*'sam'.*\]"):
        build_model(tiny_cfg(opts=["MODEL.SAM_MI.SAM.VARIANT", "sam3"]))


def test_a_new_tspp_head_is_one_class_and_one_registration(synthetic_root):
    @TSPP_HEAD_REGISTRY.register()
    class UniformTSPPHead(nn.Module):
        def __init__(self, hidden_dim: int, grid_size: int, class_chunk: int) -> None:
            super().__init__()
            self.grid_size, self.class_chunk = grid_size, class_chunk
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, cost):
            prob = self.scale * cost.new_full((cost.shape[0], self.grid_size, self.grid_size), 0.01)
            return prob, cost

    try:
        model = build_model(tiny_cfg(opts=["MODEL.SAM_MI.TSPP.HEAD_NAME", "UniformTSPPHead"])).eval()
        assert isinstance(model.prompter.head, UniformTSPPHead)
        assert model.prompter.head.class_chunk == 64  # MODEL.SAM_MI.TSPP.CLASS_CHUNK
        assert "prompter.head.scale" in model.state_dict()
    finally:
        TSPP_HEAD_REGISTRY._obj_map.pop("UniformTSPPHead")


def _imports(path: Path):
    """Modules of sam_mi imported by ``path`` (resolved relative imports)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    if path.name == "__init__.py":
        module = package
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
            found.update(n for n in [target, *names] if n.startswith("sam_mi"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("sam_mi"))
    return module, found


def test_imports_point_toward_the_meta_architecture_without_cycles():
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__") for p in files}
    graph = {}
    for path in files:
        module, found = _imports(path)
        graph[module] = {m for m in found if m in modules and m != module}
    # only the package's own registration entry points may import the meta-architecture
    importers = {m for m, deps in graph.items() if "sam_mi.modeling.meta_arch" in deps}
    assert importers <= {"sam_mi.modeling"}, importers
    stages = ["sam_mi.modeling.prompter", "sam_mi.modeling.cost_head", "sam_mi.modeling.mask_proposals"]
    for stage in stages:  # stages do not import each other (the meta-architecture wires them)
        assert not (graph[stage] & (set(stages) | {"sam_mi.modeling.sam"})), (stage, graph[stage])
    # no cycle among modules (package __init__ files re-export, so they are left out)
    inner = {m: {d for d in deps if not _is_package(d)} for m, deps in graph.items() if not _is_package(m)}
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for d in inner.get(m, ()):
            assert state.get(d) != "open", f"import cycle: {' -> '.join(stack + [m, d])}"
            if d not in state:
                visit(d, stack + [m])
        state[m] = "done"

    for m in inner:
        if m not in state:
            visit(m, [])


def _is_package(module: str) -> bool:
    return (PACKAGE.parent / module.replace(".", "/") / "__init__.py").exists()


def test_sources_cite_only_what_the_repository_holds():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    offenders = []
    outside_notes = re.compile(r"\b(catseg|data_and_sam|style_and_ecosystem)\.md\b")
    machine_path = re.compile(r"(/work/|/home/\w+|/Users/\w+|/tmp/\w+/\w+\.(py|md))")
    for name in tracked:
        if not name.endswith((".py", ".md", ".yaml", ".json", ".sh")) or name == "tests/test_architecture.py":
            continue
        text = (Path(REPO) / name).read_text(errors="ignore")
        if outside_notes.search(text) or machine_path.search(text):
            offenders.append(name)
        if name.startswith(("tools/", "tests/")) and "sys.path.insert" in text or "sys.path.append" in text:
            offenders.append(name + " (sys.path edit)")
    assert offenders == []


def test_random_frozen_sam_is_the_same_in_every_build(synthetic_root):
    """Frozen modules not loaded from a checkpoint must agree across ranks and between training and evaluation
    (issue: with broadcast_buffers=False each rank built its own random SAM)."""
    torch.manual_seed(1)
    a = build_model(tiny_cfg())
    state = torch.get_rng_state()
    torch.manual_seed(2)
    b = build_model(tiny_cfg())
    assert all(torch.equal(x, y) for x, y in zip(a.mask_generator.state_dict().values(),
                                                  b.mask_generator.state_dict().values()))
    assert not torch.equal(a.cost_head.aggregator.head.weight, b.cost_head.aggregator.head.weight)
    torch.manual_seed(1)
    build_model(tiny_cfg())
    assert torch.equal(torch.get_rng_state(), state)  # the global stream is untouched by the SAM's own seed
