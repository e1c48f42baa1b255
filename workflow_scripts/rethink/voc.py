"""PASCAL VOC XML -> COCO JSON, for the voc kind of dataset (rethink.data, whose docstring says how):
boxes only, the 20 VOC classes in VOC_CLASSES order as ids 1..20, boxes as detectron2's VOC loader
reads them, difficult objects kept with ``difficult: 1``."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from .validate_data import DatasetError

VOC_CLASSES = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]


def image_set_entry(entry: str) -> tuple[str, str]:
    """An image-set list as (year dir, list name): VOC2007/trainval -> ("VOC2007", "trainval")."""
    parts = str(entry).strip("/").split("/")
    if len(parts) != 2 or not all(parts):
        raise DatasetError(f"{entry!r} is not '<year dir>/<image-set list>' (e.g. VOC2007/trainval)")
    return parts[0], parts[1]


def voc_as_coco(root: Path, entries, field: str, version: str) -> dict:
    """The image-set lists `entries` ("<year dir>/<list>", one or several) under `root` as one COCO
    dict (boxes only; `version` in its info); a problem is a DatasetError naming `field` and the file."""
    images, anns = [], []
    for entry in [entries] if isinstance(entries, str) else entries:
        year, lst = image_set_entry(entry)
        list_path = root / year / "ImageSets" / "Main" / f"{lst}.txt"
        ids = [line.split()[0] for line in list_path.read_text().splitlines() if line.strip()]
        for vid in ids:
            xml_path = root / year / "Annotations" / f"{vid}.xml"
            try:
                tree = ET.parse(xml_path).getroot()
            except (OSError, ET.ParseError) as e:
                raise DatasetError(f"{field}: {xml_path} (listed in {list_path}): {e}") from None
            size = tree.find("size")
            if size is None:
                raise DatasetError(f"{field}: {xml_path}: no <size>")
            image_id = len(images) + 1
            images.append(
                {
                    "id": image_id,
                    "file_name": f"{year}/JPEGImages/{vid}.jpg",
                    "voc_id": f"{year}/{vid}",
                    "width": int(size.findtext("width")),
                    "height": int(size.findtext("height")),
                }
            )
            for obj in tree.findall("object"):
                cls = (obj.findtext("name") or "").strip()
                if cls not in VOC_CLASSES:
                    raise DatasetError(f"{field}: {xml_path}: unknown VOC class {cls!r}")
                bb = obj.find("bndbox")
                x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
                x0, y0 = x0 - 1.0, y0 - 1.0  # detectron2's VOC loader: 1-based inclusive -> 0-based
                w, h = x1 - x0, y1 - y0
                difficult = int(obj.findtext("difficult") or 0)
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": image_id,
                        "category_id": VOC_CLASSES.index(cls) + 1,
                        "bbox": [x0, y0, w, h],
                        "area": w * h,
                        "iscrowd": 0,
                        "difficult": difficult,
                    }
                )
    cats = [{"id": i + 1, "name": c, "supercategory": "voc"} for i, c in enumerate(VOC_CLASSES)]
    return {
        "info": {"description": f"PASCAL VOC {entries} as COCO (boxes only)", "version": version},
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": cats,
    }
