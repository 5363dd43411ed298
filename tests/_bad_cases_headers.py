"""Bad-input cases for ILSVRC and wsolevaluation datasets (docs/bad-inputs.md, D34 on): a JPEG cut short is
refused by ``data check`` without ``--deep`` and by ``train`` / ``ablate`` before any run row is stored,
because every format reads every image header by default.

Each entry is (id, argv(w), expected substring, setup(w), exit code), run by test_bad_inputs.py's ``Case``
machinery against its workspace ``w`` (``w["root"]`` is the test's folder; the setups build the datasets
there).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

SYNSETS = ("n01000001", "n02000002")


def _jpeg(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 20), (shade, 90, 40)).save(path)


def _cut_end(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-2])  # the header intact, the JPEG end-of-image marker gone


def _voc(synset: str) -> str:
    return (f"<annotation><size><width>24</width><height>20</height><depth>3</depth></size><object>"
            f"<name>{synset}</name><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>11</xmax><ymax>9</ymax></bndbox>"
            f"</object></annotation>")


def write_ilsvrc(root: Path) -> Path:
    """A tiny valid ILSVRC CLS-LOC folder: 2 synsets x 3 train images, 2 val images with VOC XML."""
    root.mkdir(parents=True)
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{s} class {k}\n" for k, s in enumerate(SYNSETS)))
    for k, synset in enumerate(SYNSETS):
        for j in range(3):
            _jpeg(root / "train" / synset / f"{synset}_{j}.JPEG", 40 * k + 10 * j)
        stem = f"ILSVRC2012_val_{k + 1:08d}"
        _jpeg(root / "val" / f"{stem}.JPEG", 40 * k)
        (root / "val_annotations").mkdir(exist_ok=True)
        (root / "val_annotations" / f"{stem}.xml").write_text(_voc(synset))
    return root


def write_wsol(root: Path) -> Path:
    """A tiny valid wsolevaluation layout: ``root/metadata/{train,test}`` over images in ``root``."""
    splits = {"train": [(f"c{c}/tr{j}.jpg", c) for c in (0, 1) for j in range(3)],
              "test": [(f"c{c}/te0.jpg", c) for c in (0, 1)]}
    for split, items in splits.items():
        meta = root / "metadata" / split
        meta.mkdir(parents=True)
        for rel, label in items:
            _jpeg(root / rel, 60 * label)
        (meta / "image_ids.txt").write_text("".join(f"{rel}\n" for rel, _ in items))
        (meta / "class_labels.txt").write_text("".join(f"{rel},{label}\n" for rel, label in items))
        (meta / "image_sizes.txt").write_text("".join(f"{rel},24,20\n" for rel, _ in items))
        (meta / "localization.txt").write_text("".join(f"{rel},2,3,12,10\n" for rel, _ in items))
    return root


def _ilsvrc_cut(w: dict) -> None:
    root = write_ilsvrc(w["root"] / "ilsvrc")
    _cut_end(root / "train" / SYNSETS[0] / f"{SYNSETS[0]}_1.JPEG")


def _wsol_cut(w: dict) -> None:
    root = write_wsol(w["root"] / "wsol")
    _cut_end(root / "c1" / "te0.jpg")


def _check(name: str, *extra: str):
    return lambda w: ["data", "check", str(w["root"] / name), *extra]


def _train(name: str, *extra: str):
    return lambda w: ["train", "--profile", "smoke", "--db", w["url"], "--artifacts", str(w["root"] / "runs"),
                      "--dataset", name, "--data", str(w["root"] / name), *extra]


def _ablate(name: str):
    return lambda w: ["ablate", "table3", "--profile", "smoke", "--registry", str(w["reg"]), "--db", w["url"],
                      "--artifacts", str(w["root"] / "runs"), "--dataset", name, "--data", str(w["root"] / name)]


CUT = "truncated image file (no JPEG end-of-image marker at its end)"

HEADERS: list[tuple] = [
    ("D34-ilsvrc-truncated-jpeg-check", _check("ilsvrc"), CUT, _ilsvrc_cut, 2),
    ("D35-train-on-ilsvrc-truncated-jpeg", _train("ilsvrc"), CUT, _ilsvrc_cut, 2),
    ("D36-ablate-on-ilsvrc-truncated-jpeg", _ablate("ilsvrc"), CUT, _ilsvrc_cut, 2),
    ("D37-wsol-truncated-jpeg-check", _check("wsol"), CUT, _wsol_cut, 2),
    ("D38-train-on-wsol-truncated-jpeg", _train("wsol"), CUT, _wsol_cut, 2),
    ("D39-ablate-on-wsol-truncated-jpeg", _ablate("wsol"), CUT, _wsol_cut, 2),
]
