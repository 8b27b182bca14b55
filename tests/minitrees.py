"""Miniature benchmark trees in the official layouts, for tests."""
from pathlib import Path

from featx.data.datasets import ACTIONS, VOC_CLASSES

from conftest import make_image


def make_voc(root: Path, year="2007", trainval=("000005", "000007", "000009", "000012"),
             test=("000001", "000004"), real_images=False):
    base = root / f"voc{year}" / "VOCdevkit" / f"VOC{year}"
    main = base / "ImageSets" / "Main"
    main.mkdir(parents=True)
    for k, i in enumerate(trainval + test):
        p = base / "JPEGImages" / f"{i}.jpg"
        if real_images:
            make_image(p, (300, 225) if k % 2 else (225, 300), seed=k, fmt="JPEG")
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"")
    splits = {"train": trainval[:2], "val": trainval[2:], "trainval": trainval}
    if test:
        splits["test"] = test
    for s, ids in splits.items():
        (main / f"{s}.txt").write_text("".join(f"{i}\n" for i in ids))
        for c, cls in enumerate(VOC_CLASSES):
            # image k is positive for class k % 20, and 'difficult' for class (k + 1) % 20
            lines = []
            for i in ids:
                k = (trainval + test).index(i)
                lab = 1 if c == k % 20 else 0 if c == (k + 1) % 20 else -1
                lines.append(f"{i} {lab:2d}\n")
            (main / f"{cls}_{s}.txt").write_text("".join(lines))
    return base


PERSON = """<object><name>person</name>
<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox>
<actions>{flags}</actions></object>"""


def make_voc_action(root: Path, real_images=False):
    """2 images; 2010_000001 has persons #1 (jumping) and #2 (phoning + other-flagged 0),
    2010_000002 has a non-person object #1 and person #2 (walking). train: image 1, val: image 2."""
    base = root / "voc2012" / "VOCdevkit" / "VOC2012"
    (base / "ImageSets" / "Action").mkdir(parents=True)
    (base / "Annotations").mkdir(parents=True)
    persons = {("2010_000001", 1): ("jumping", (11, 21, 110, 220)),
               ("2010_000001", 2): ("phoning", (101, 1, 300, 225)),
               ("2010_000002", 2): ("walking", (1, 1, 150, 300))}
    for k, image_id in enumerate(("2010_000001", "2010_000002")):
        p = base / "JPEGImages" / f"{image_id}.jpg"
        if real_images:
            make_image(p, (300, 225) if k == 0 else (225, 300), seed=k, fmt="JPEG")
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"")
        objects = []
        if image_id == "2010_000002":
            objects.append("<object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
                           "<xmax>5</xmax><ymax>5</ymax></bndbox></object>")
        for (i, n), (action, (x1, y1, x2, y2)) in sorted(persons.items()):
            if i == image_id:
                flags = "".join(f"<{a}>{int(a == action)}</{a}>" for a in ACTIONS + ("other",))
                objects.append(PERSON.format(x1=x1, y1=y1, x2=x2, y2=y2, flags=flags))
        (base / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.jpg</filename>{''.join(objects)}</annotation>")
    split_of = {"2010_000001": "train", "2010_000002": "val"}
    for s in ("train", "val", "trainval"):
        for a in ACTIONS:
            lines = [f"{i} {n} {1 if act == a else -1:2d}\n" for (i, n), (act, _) in sorted(persons.items())
                     if s == "trainval" or split_of[i] == s]
            (base / "ImageSets" / "Action" / f"{a}_{s}.txt").write_text("".join(lines))
    return base


def make_caltech(root: Path, name="caltech101", per_class=(33, 35, 40), real_images=False):
    folder = {"caltech101": "101_ObjectCategories", "caltech256": "256_ObjectCategories"}[name]
    base = root / name / folder
    for c, n in enumerate(per_class):
        cls = f"{c + 1:03d}.class{c}" if name == "caltech256" else f"class{c}"
        for i in range(n):
            p = base / cls / f"image_{i:04d}.jpg"
            if real_images:
                make_image(p, (240, 230), seed=100 * c + i, fmt="JPEG")
            else:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(b"")
    return base
