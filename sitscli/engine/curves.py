"""Training curves: one PNG with the losses and, beside them, any other validation metric per epoch."""

from __future__ import annotations

from pathlib import Path

from sitscli.core.io import atomic_output


def plot_curves(history: list[dict], path: Path, best_epoch: int = 0) -> None:
    """history rows {"epoch", "train_loss", "val_loss", "val_<metric>"..., "lr"} -> PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")  # batch jobs have no display
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    losses = [k for k in ("train_loss", "val_loss") if any(k in row for row in history)]
    metrics = sorted({k for row in history for k in row if k.startswith("val_") and k != "val_loss"})
    fig, axes = plt.subplots(1, 2 if metrics else 1, figsize=(10 if metrics else 5.5, 3.8), squeeze=False)
    for ax, keys, title in ((axes[0, 0], losses, "loss"), (axes[0, -1], metrics, "validation metrics")):
        if not keys:
            continue
        for key in keys:
            ax.plot(epochs, [row.get(key, float("nan")) for row in history], marker=".", label=key)
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_output(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
