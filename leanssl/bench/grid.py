"""The bench grid (methods x data fractions x backbones x training mode) and its presets (profiles).

A profile is a list of blocks; each block is the product of its backbones, fractions and methods at
one training length: `epochs` (equal epochs) or `budget` seconds (equal wall-clock: every run stops
when its time is spent, and its learning-rate schedule follows the time). A profile's methods are
method names or Variants (a method with some of its settings given: an ablation row). On the command
line, `--methods` replaces every block's methods (a name may be one of the profile's variants);
giving any of `--backbones`, `--fractions`, `--epochs` or `--budget` makes the grid exactly their
product, the others taken from the profile's first block.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from ..errors import LeansslError
from ..eval.knn import KNN_K, KNN_T
from ..methods import pretraining_methods


@dataclass(frozen=True)
class Variant:
    """A method with some of its settings given (an ablation row), named for the table and the cell's folder."""

    name: str
    method: str
    method_args: tuple[tuple[str, object], ...] = ()  # (field, value) pairs of the method's Config


@dataclass(frozen=True)
class Cell:
    """One run of the grid: a method (with its settings, for a variant), a backbone, a data fraction and a
    training length."""

    method: str
    backbone: str
    fraction: float
    epochs: int | None = None    # equal-epochs mode
    budget: float | None = None  # equal wall-clock mode: seconds of training (epochs is then no limit)
    variant: str | None = None   # the variant's name; None: the method at its defaults
    method_args: tuple[tuple[str, object], ...] = ()

    @property
    def name(self) -> str:
        """What the tables call it: the variant's name, else the method's."""
        return self.variant or self.method

    def spec(self) -> dict:
        """The cell as cell.json and results.json hold it (a plain method's as before variants existed)."""
        d = asdict(self)
        if self.variant is None:
            del d["variant"], d["method_args"]
        else:
            d["method_args"] = dict(self.method_args)
        return d

    @property
    def mode(self) -> str:
        return "budget" if self.budget is not None else "epochs"

    @property
    def length(self) -> str:
        """'10 epochs' or '60 s'."""
        return f"{self.budget:g} s" if self.budget is not None else f"{self.epochs} epoch{'s' * (self.epochs != 1)}"

    @property
    def key(self) -> str:
        """Folder name: essl-small_cnn-f0.1-e10 or essl-small_cnn-f0.1-b60s."""
        length = f"b{self.budget:g}s" if self.budget is not None else f"e{self.epochs}"
        return f"{self.name}-{self.backbone.replace('/', '_')}-f{self.fraction:g}-{length}"

    @property
    def label(self) -> str:
        return f"{self.name} {self.backbone} fraction {self.fraction:g}, {self.length}"


@dataclass(frozen=True)
class Block:
    backbones: tuple[str, ...]
    fractions: tuple[float, ...]
    epochs: int | None = None
    budget: float | None = None
    methods: tuple[str | Variant, ...] | None = None  # None: the profile's methods

    def cells(self, methods: tuple[str | Variant, ...]) -> list[Cell]:
        return [_cell(m, b, f, self.epochs, self.budget)
                for b in self.backbones for f in self.fractions for m in (self.methods or methods)]


def _cell(m: str | Variant, backbone: str, fraction: float, epochs: int | None, budget: float | None) -> Cell:
    if isinstance(m, Variant):
        return Cell(m.method, backbone, fraction, epochs, budget, m.name, m.method_args)
    return Cell(m, backbone, fraction, epochs, budget)


@dataclass(frozen=True)
class EvalPlan:
    """How every cell is scored. Subsets are seeded and class-stratified; None: the whole split."""

    train_images: int | None = None  # labelled training images the kNN / linear / few-shot protocols use
    test_images: int | None = None   # test images scored
    curve_train: int = 10_000        # the accuracy-over-time curve: kNN on this fixed subsample (of the above)
    curve_test: int = 5_000
    curve_points: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75)  # fractions of the run's steps (plus start and end)
    knn_k: int = KNN_K
    knn_t: float = KNN_T
    linear_c_values: int = 45        # C values of the linear probe's sweep (Ericsson et al.: 45)
    fewshot_ways: int = 5
    fewshot_shots: tuple[int, ...] = (5,)
    fewshot_episodes: int = 600
    quantize: tuple[int, ...] = ()   # also score the backbone quantised to these bit-widths (leanssl.quantize)


@dataclass(frozen=True)
class Profile:
    name: str
    about: str
    methods: tuple[str | Variant, ...] | None  # None: every pretraining method known when the grid is built

    def method_list(self) -> tuple[str | Variant, ...]:
        return self.methods if self.methods is not None else tuple(pretraining_methods())
    blocks: tuple[Block, ...]
    batch_size: int
    eval: EvalPlan = field(default_factory=EvalPlan)


PROFILES = {
    "cpu": Profile(
        "cpu", "about 45-60 minutes on a quiet 2-core CPU with Fashion-MNIST (60k images of 28 px)",
        methods=("essl", "npid", "simclr", "byol"),
        blocks=(
            # Equal wall-clock across data scales: every run gets one minute.
            Block(("small_cnn",), (0.01, 0.1, 1.0), budget=60.0),
            # Equal epochs at the small scales (at 100% ten epochs of the two-view methods alone take ~30 min).
            Block(("small_cnn",), (0.01, 0.1), epochs=10),
            # The bigger backbones: single-branch vs SimCLR at equal wall-clock on 10% of the data.
            Block(("small_cnn", "mobilenetv3_small_050", "resnet18_cifar", "vit_tiny_cifar"), (0.1,), budget=120.0,
                  methods=("essl", "simclr")),
        ),
        batch_size=256,
        eval=EvalPlan(train_images=6000, test_images=2000, curve_train=2000, curve_test=1000,
                      curve_points=(0.25, 0.5, 0.75), linear_c_values=12, fewshot_episodes=200),
    ),
    "gpu": Profile(
        "gpu", "the full-scale grid for one H100: every method, the paper's 200 epochs; roughly 10-16 hours "
        "(estimated from counted FLOPs, not yet measured)",
        methods=None,
        blocks=(
            Block(("resnet18_cifar", "mobilenetv3_small_100", "vit_tiny_cifar", "small_cnn"), (0.01, 0.1, 1.0),
                  epochs=200),
            Block(("resnet18_cifar",), (0.1, 1.0), budget=600.0),
        ),
        batch_size=256,
        eval=EvalPlan(),
    ),
    # What benchmarks/methods.py ran: every method on one harness, scored on the whole labelled splits.
    "methods": Profile(
        "methods", "every method, 10 epochs on 10% of the data with small_cnn: about 50 minutes of training on 2 "
        "busy cores with Fashion-MNIST (BENCHMARKS.md's methods table), plus each cell's evaluation on the whole "
        "labelled splits",
        methods=None,
        blocks=(Block(("small_cnn",), (0.1,), epochs=10),),
        batch_size=256,
        eval=EvalPlan(),
    ),
    # What benchmarks/ablation.py ran: npid, then one of essl's components at a time, up to essl.
    "ablation": Profile(
        "ablation", "npid to essl one component at a time, 8 epochs on all the data with small_cnn: about an hour "
        "of training on 2 busy cores with Fashion-MNIST (BENCHMARKS.md's ablation table, which had one row fewer), "
        "plus each cell's evaluation on the whole labelled splits",
        methods=(
            "npid",
            Variant("npid+calibration", "npid", (("calibrate", True),)),
            Variant("npid+calibration+grad", "npid", (("calibrate", True), ("bank_update", "grad"))),
            Variant("npid+calibration+grad+sqrtkl", "npid",
                    (("calibrate", True), ("bank_update", "grad"), ("kl_weight", 20.0))),
            "essl",  # = the row above + CutMix
            Variant("essl-ema", "essl", (("bank_update", "ema"),)),
        ),
        blocks=(Block(("small_cnn",), (1.0,), epochs=8),),
        batch_size=256,
        eval=EvalPlan(),
    ),
}


def parse_list(text: str, what: str) -> tuple[str, ...]:
    items = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    if not items:
        raise LeansslError(f"--{what}: expected a comma-separated list, got {text!r}")
    return items


def parse_fractions(text: str) -> tuple[float, ...]:
    out = []
    for t in parse_list(text, "fractions"):
        try:
            f = float(t)
        except ValueError:
            raise LeansslError(f"--fractions: {t!r} is not a number") from None
        if not 0 < f <= 1:
            raise LeansslError(f"--fractions: {t} is not in (0, 1]")
        out.append(f)
    return tuple(out)


def build_grid(profile: Profile, methods=None, backbones=None, fractions=None, epochs=None, budget=None) -> list[Cell]:
    """The cells of `profile` with the command line's replacements (see the module docstring)."""
    if epochs is not None and budget is not None:
        raise LeansslError("give --epochs or --budget, not both")
    if epochs is not None and epochs < 1:
        raise LeansslError(f"--epochs must be at least 1, got {epochs}")
    blocks = list(profile.blocks)
    if any(v is not None for v in (backbones, fractions, epochs, budget)):
        first = blocks[0]
        given = epochs is not None or budget is not None
        length = dict(epochs=epochs, budget=budget) if given else dict(epochs=first.epochs, budget=first.budget)
        blocks = [Block(backbones or first.backbones, fractions or first.fractions, **length)]
    if methods is not None:
        variants = {m.name: m for m in profile.method_list() if isinstance(m, Variant)}
        blocks = [replace(b, methods=tuple(variants.get(m, m) for m in methods)) for b in blocks]
    cells = list(dict.fromkeys(c for b in blocks for c in b.cells(profile.method_list())))
    check_names(cells)
    return cells


def check_names(cells: list[Cell]) -> None:
    """Unknown methods, settings and backbones are one clear error, before anything is trained."""
    from ..methods import METHODS
    from ..methods.base import config_from_args
    from ..models.backbones import check_backbone_name

    bad = sorted({c.method for c in cells} - set(METHODS))
    if bad:
        raise LeansslError(f"unknown method{'s' * (len(bad) > 1)} {', '.join(bad)}: "
                           f"choose from {', '.join(sorted(METHODS))}")
    for c in cells:
        config_from_args(METHODS[c.method].Config, dict(c.method_args))
    for name in dict.fromkeys(c.backbone for c in cells):
        check_backbone_name(name)


def estimate(cells: list[Cell], profile: Profile) -> str:
    """How long this grid takes, as far as it can be said before running it: the profile's measured estimate
    for its own full grid; for another grid, the training time its budget cells fix (epoch cells depend on
    the machine, so they are counted, not timed)."""
    if cells == build_grid(profile):
        return f"the full {profile.name} profile: {profile.about}"
    budget = sum(c.budget for c in cells if c.budget is not None)
    epochs = sum(1 for c in cells if c.budget is None)
    parts = []
    if budget:
        parts.append(f"{budget / 60:.1f} min of training in the budget cells")
    if epochs:
        parts.append(f"{epochs} equal-epoch cell(s) whose time depends on the machine")
    return " + ".join(parts) + ", plus each cell's evaluation and the floors (not estimated)"

