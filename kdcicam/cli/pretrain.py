"""``kdcicam pretrain``: pretrain a reduced backbone on the pretraining set (docs/synthetic.md)."""

from __future__ import annotations

from pathlib import Path

import typer


def pretrain_cmd(
    out: Path = typer.Argument(..., help="Folder for the resumable position and the weights (+ .json sidecar)."),
    backbone: str = typer.Option("vgg16", help="vgg16 (VGG16-BN) or inceptionv3."),
    epochs: int = typer.Option(8, help="Epochs (cosine lr from --lr to 0)."),
    per_class: int = typer.Option(100, "--per-class", help="Images per class (60 classes), val included."),
    val_per_class: int = typer.Option(10, "--val-per-class", help="Of which held out for validation."),
    size: int = typer.Option(96, help="Image side in pixels."),
    width: float = typer.Option(0.125, help="Channel multiplier of the backbone (the profile's model.width)."),
    batch_size: int = typer.Option(64, "--batch-size"),
    lr: float = typer.Option(2e-3, help="AdamW learning rate."),
    seed: int = typer.Option(0, help="Seed of the set's images, the weight init, the order and the flips."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Pretrain VGG16-BN or InceptionV3 as a 60-class classifier; resumes from OUT when interrupted; same seed, same weights."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from kdcicam.data.pretraining_set import PretrainSetConfig
    from kdcicam.training.pretrain import PretrainConfig, pretrain

    stride = 16 if backbone == "inceptionv3" else 8  # InceptionV3 has stride 16 only
    cfg = PretrainConfig(backbone=backbone, output_stride=stride, width=width, epochs=epochs,
                         batch_size=batch_size, lr=lr, seed=seed,
                         data=PretrainSetConfig(per_class=per_class, val_per_class=val_per_class,
                                                size=size, seed=seed)).validate()
    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console,
                  disable=quiet) as progress:
        task = progress.add_task("pretrain", total=None, info="generating the pretraining set")

        def on_step(step: int, steps: int, loss: float) -> None:
            progress.update(task, total=steps, completed=step, info=f"loss={loss:.3f}")

        def on_epoch(record: dict[str, float]) -> None:
            progress.console.print(f"epoch {record['epoch']}/{epochs}: loss {record['loss']:.3f}, "
                                   f"val top-1 {record['val_top1']:.3f}, {record['seconds']:.0f} s")

        path = pretrain(cfg, out, on_step=on_step, on_epoch=on_epoch)
    typer.echo(f"wrote {path} (and {path.with_suffix('.json').name})")
