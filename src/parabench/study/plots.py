"""The report's plots: accuracy against speed per class and overall, test accuracy per seed, validation
accuracy per epoch (from the records' curves)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from parabench.models.zoo import study_models
from parabench.results.groups import SeedGroup
from parabench.study.statistics import class_order, pareto_front


def new_figure(columns: int = 1, width: float = 7.0, height: float = 4.5) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, columns, figsize=(width * columns, height), squeeze=False)
    return figure, axes[0]


def save(figure: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def speed_label(rows: list[dict[str, Any]]) -> str:
    machines = sorted({row["throughput_hardware"] for row in rows})
    return f"test inference pairs/s ({'; '.join(machines)})"


def plot_tradeoff(rows: list[dict[str, Any]], size_class: str, path: Path) -> Path:
    """Test accuracy against samples/s, with std bars, the Pareto front joined and starred."""
    figure, (axis,) = new_figure()
    points = [(row["eval_samples_per_second_mean"], row["test_accuracy_mean"]) for row in rows]
    for row, (x, y) in zip(rows, points, strict=True):
        axis.errorbar(
            x,
            y,
            xerr=np.nan_to_num(row["eval_samples_per_second_std"]),
            yerr=np.nan_to_num(row["test_accuracy_std"]),
            fmt="o",
            capsize=3,
        )
        axis.annotate(row["model"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    front = sorted(points[i] for i in pareto_front(points))
    axis.plot(*zip(*front, strict=True), "r*--", markersize=12, label="Pareto front")
    axis.set(
        xlabel=speed_label(rows),
        ylabel="test accuracy (%)",
        title=f"{size_class}: accuracy vs speed (mean ± std over seeds)",
    )
    axis.legend()
    return save(figure, path)


def plot_front(rows: list[dict[str, Any]], paper_hardware: str, path: Path) -> Path:
    """Every row of ours (a colour per class) and the study's (hollow, its own hardware) on one accuracy vs
    samples/s plot, log-scaled speed, with our Pareto front joined."""
    figure, (axis,) = new_figure(width=9.0, height=5.5)
    for index, size_class in enumerate(class_order(row["size_class"] for row in rows)):
        mine = [row for row in rows if row["size_class"] == size_class]
        axis.scatter(
            [row["eval_samples_per_second_mean"] for row in mine],
            [row["test_accuracy_mean"] for row in mine],
            color=f"C{index}",
            label=f"{size_class} (ours)",
            zorder=3,
        )
        for row in mine:
            point = (row["eval_samples_per_second_mean"], row["test_accuracy_mean"])
            axis.annotate(row["model"], point, textcoords="offset points", xytext=(4, 4), fontsize=7)
    study = [
        (paper["samples_per_second"], paper["test_accuracy"], model)
        for model, (_, paper) in study_models().items()
        if paper.get("samples_per_second") is not None and paper.get("test_accuracy") is not None
    ]
    if study:
        axis.scatter([s for s, _, _ in study], [a for _, a, _ in study], facecolors="none", edgecolors="grey",
                     label=f"study ({paper_hardware})")  # fmt: skip
        for speed, accuracy, model in study:
            axis.annotate(model, (speed, accuracy), textcoords="offset points", xytext=(4, -8), fontsize=6)
    points = [(row["eval_samples_per_second_mean"], row["test_accuracy_mean"]) for row in rows]
    front = sorted(points[i] for i in pareto_front(points))
    axis.plot(*zip(*front, strict=True), "r*--", markersize=12, label="Pareto front (ours)")
    axis.set_xscale("log")
    axis.set(
        xlabel=f"{speed_label(rows)} (log)",
        ylabel="test accuracy (%)",
        title="Every model: accuracy vs speed",
    )
    axis.legend(fontsize=8)
    return save(figure, path)


def plot_seed_spread(groups: list[SeedGroup], collapsed: dict[str, set[int]], path: Path) -> Path:
    """Test accuracy of every seed, per model: a box per model with the seeds drawn over it."""
    figure, (axis,) = new_figure(width=max(7.0, 1.2 * len(groups)))
    values = [group.values("test_accuracy", 100.0) for group in groups]
    axis.boxplot(values, showfliers=False)
    for position, (group, seeds) in enumerate(zip(groups, values, strict=True), start=1):
        colors = ["red" if seed in collapsed.get(group.model, set()) else "black" for seed in group.runs]
        axis.scatter(np.full(len(seeds), position), seeds, c=colors, s=18, zorder=3)
    axis.set_xticks(range(1, len(groups) + 1), [group.model for group in groups], rotation=30, ha="right")
    axis.set(ylabel="test accuracy (%)", title="Test accuracy per seed (red: collapsed seed)")
    return save(figure, path)


def plot_validation_curves(groups: list[SeedGroup], path: Path) -> Path:
    """Validation accuracy per epoch from the records: one panel per size class, a line per seed."""
    classes = class_order(group.size_class for group in groups)
    figure, axes = new_figure(columns=len(classes), width=6.0)
    for axis, size_class in zip(axes, classes, strict=True):
        for index, group in enumerate(g for g in groups if g.size_class == size_class):
            for position, record in enumerate(group.runs.values()):
                label = group.model if position == 0 else None
                epochs = record.curves.get("epoch", [])
                accuracy = [100.0 * value for value in record.curves.get("validation_accuracy", [])]
                axis.plot(epochs, accuracy, marker="o", color=f"C{index}", alpha=0.7, label=label)
        axis.set(xlabel="epoch", ylabel="validation accuracy (%)", title=size_class)
        axis.legend(fontsize=8)
    return save(figure, path)


def write_plots(
    rows: list[dict[str, Any]], groups: list[SeedGroup], folder: Path, paper_hardware: str
) -> list[Path]:
    """Every plot of the report, into the folder."""
    paths = []
    for size_class in class_order(row["size_class"] for row in rows):
        mine = [row for row in rows if row["size_class"] == size_class]
        paths.append(plot_tradeoff(mine, size_class, folder / f"tradeoff_{size_class}.png"))
    paths.append(plot_front(rows, paper_hardware, folder / "tradeoff_all.png"))
    collapsed = {row["model"]: {int(s) for s in row["collapsed_seeds"].split(",") if s} for row in rows}
    paths.append(plot_seed_spread(groups, collapsed, folder / "seed_spread.png"))
    paths.append(plot_validation_curves(groups, folder / "validation_curves.png"))
    return paths
