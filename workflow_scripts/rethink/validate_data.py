"""Checks of COCO-format splits when their dataset is prepared (rethink.data calls :func:`validate`
for kinds coco and voc), so that data that would corrupt training stops the prepare_data job
instead of a training job hours later.

Every image record: ``id`` an integer given once, ``file_name`` a path under the split's images
folder that exists and whose header PIL can read (``Image.open`` reads the header only: a file
truncated after its header passes), ``width``/``height`` positive integers equal to the file's
size after its EXIF orientation (orientations 5-8 swap the sides; the engines apply the
orientation when they decode an image, as detectron2 does).

Every annotation (of an image whose record and file passed): ``image_id`` a known image, and
(rethink.annotation_checks) ``category_id`` one of the dataset's categories, ``bbox`` four finite
numbers [x, y, w, h] with w, h >= 0 inside the image within max(BOX_TOLERANCE_PX,
BOX_TOLERANCE_FRAC x side), ``area`` a
finite number >= 0 (COCOeval reads it), ``keypoints`` (when given: 3 finite numbers per keypoint
name of its category; a category without names takes none), ``segmentation`` well formed when
present (polygons: a list of lists of an even number >= 6 of finite numbers, every point inside the
image within the bbox tolerance, as pycocotools rasterises along the edges and a far point costs
memory in proportion to its distance; RLE: a dict whose ``counts`` is a list of integers or a
compressed string whose runs sum to height x width, and whose ``size`` is the image's [height, width]).

Masks: a set whose non-crowd annotations have a segmentation (any of them) is a mask set; there a
non-crowd annotation without one is a problem (``segmentation_missing``). A set where none has
one is boxes-only: its manifest says ``masks: false`` and a mask task on it is refused when
training starts (rethink.data.check_task).

Annotation ids 0 (pycocotools' COCOeval takes a matched ground truth of id 0 for unmatched) or
given twice: every annotation of the split is renumbered 1..N in file order in the prepared JSON,
counted in the report. That is a repair, not a problem.

``on_bad_data`` (config ``datasets.<name>.on_bad_data``): ``error`` (the default) stops with a
DatasetError naming the annotation file, the image id and file, and the field of the first
problem, with the count of every kind; ``skip`` drops each bad image with all its annotations,
the image of each bad annotation likewise (a half-labelled image would teach that its other
objects are background), and an annotation of an unknown image. Either way the report
``validation.json`` (beside the manifest, written before any error) holds per split the count of
every problem kind (PROBLEMS), its first EXAMPLES examples (image id, file, field, message), what
was dropped and how many ids were renumbered; one summary line goes to the job log.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from .annotation_checks import annotation_problems, is_int
from .atomic import write_json_atomic

ON_BAD_DATA = ("error", "skip")
EXIF_ORIENTATION = 0x0112
SWAPS_SIDES = (5, 6, 7, 8)  # EXIF orientations whose stored pixels are turned by 90 degrees
EXAMPLES = 5  # examples kept per problem kind in validation.json
HEADER_THREADS = 16  # header reads are I/O bound (a network file system on a cluster)
REPORT = "validation.json"


class DatasetError(ValueError):
    """A dataset that cannot be prepared or read; the message names the field or file. (Defined
    here so that this module imports nothing of rethink.data; rethink.data.DatasetError is it.)"""


PROBLEMS = {
    "image_record": "id, file_name, width or height missing or of the wrong type",
    "image_id_duplicate": "an image id given to two records",
    "image_missing": "no file at <images>/<file_name>",
    "image_unreadable": "the file's header is not an image PIL can read",
    "image_size_mismatch": "width/height differ from the file's size after EXIF orientation",
    "annotation_record": "an entry of annotations that is not a mapping",
    "image_unknown": "an annotation's image_id names no image",
    "category_unknown": "an annotation's category_id is not among the categories",
    "bbox_malformed": "bbox is not 4 finite numbers with w, h >= 0",
    "bbox_outside": "bbox extends past the image (beyond the tolerance)",
    "area_malformed": "area missing or not a finite number >= 0",
    "iscrowd_malformed": "iscrowd is not 0 or 1 (a missing one is written as 0 in the prepared JSON)",
    "keypoints_malformed": "keypoints of a keypoint category are not 3 x (its keypoint count) finite numbers",
    "segmentation_missing": "a non-crowd annotation of a mask set has no segmentation",
    "polygon_malformed": "a polygon is not a list of an even number >= 6 of finite numbers",
    "polygon_outside": "a polygon point lies past the image (beyond the bbox tolerance)",
    "rle_malformed": "an RLE's counts is not a string or list of integers whose runs cover the image, or its size "
    "is not the image's [h, w]",
}


def oriented_size(path) -> tuple[int, int, int]:
    """(width, height, EXIF orientation) of an image file from its header, the sides swapped for
    orientations 5-8 (the size an EXIF-aware decoder gives). Raises OSError (PIL's
    UnidentifiedImageError is one) or DecompressionBombError if unreadable."""
    with Image.open(path) as im:
        w, h = im.size
        try:
            orientation = int(im.getexif().get(EXIF_ORIENTATION) or 1)
        except (TypeError, ValueError, SyntaxError):  # a damaged EXIF block: as if none
            orientation = 1
    return (h, w, orientation) if orientation in SWAPS_SIDES else (w, h, orientation)


def _header(path: Path):
    try:
        return oriented_size(path)
    except FileNotFoundError:
        return "image_missing", f"no such file {path}"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # UnidentifiedImageError: OSError
        return "image_unreadable", f"{path}: {e}"


def has_masks(annotations) -> bool:
    """Whether any non-crowd annotation carries a segmentation (a mask set)."""
    if not isinstance(annotations, list):  # Split.check names it
        return False
    return any(not a.get("iscrowd", 0) and a.get("segmentation") for a in annotations if isinstance(a, dict))


class Split:
    """The findings of one split: counts and examples per problem kind, what is bad."""

    def __init__(self, name: str, coco: dict, images_dir: Path, ann_path):
        self.name, self.coco, self.images_dir, self.ann_path = name, coco, Path(images_dir), str(ann_path)
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list] = {}
        self.first: str | None = None
        self.bad_images: set = set()
        self.bad_anns: set[int] = set()
        self.renumber = False  # ids 0 or given twice: renumber 1..N when written
        self.renumbered = 0
        self.crowd_filled = 0  # annotations without iscrowd (0 in the prepared JSON)
        self.rotated = 0

    def add(self, kind: str, image: dict | None, field: str, message: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        image_id = image.get("id") if isinstance(image, dict) else None
        file_name = image.get("file_name") if isinstance(image, dict) else None
        ex = self.examples.setdefault(kind, [])
        if len(ex) < EXAMPLES:
            ex.append({"image_id": image_id, "file_name": file_name, "field": field, "message": message})
        if self.first is None:
            where = f"image {image_id} ({file_name}): " if image is not None else ""
            self.first = f"{self.ann_path}: {where}{field}: {message}"

    def check(self, categories, masks: bool) -> None:
        images = self.coco.get("images")
        anns = self.coco.get("annotations")
        if not isinstance(images, list) or not isinstance(anns, list):
            raise DatasetError(f"{self.ann_path}: 'images' and 'annotations' must be lists")
        by_id = self._check_images(images)
        self._check_headers([im for iid, im in by_id.items() if iid not in self.bad_images])
        self._check_annotations(anns, by_id, categories, masks)

    def _check_images(self, images: list) -> dict:
        """The image records' ids, sides and file names; returns id -> record of the first record of
        each integer id (the bad among them in bad_images)."""
        by_id: dict = {}
        for i, im in enumerate(images):
            if not isinstance(im, dict) or not is_int(im.get("id")):
                self.add(
                    "image_record",
                    None,
                    f"images[{i}].id",
                    f"{im.get('id') if isinstance(im, dict) else im!r} is not an integer id",
                )
                self.bad_images.add(("index", i))
                continue
            bad = [k for k in ("width", "height") if not (is_int(im.get(k)) and im[k] > 0)]
            if not isinstance(im.get("file_name"), str) or not im["file_name"]:
                bad.insert(0, "file_name")
            if im["id"] in by_id:
                self.add(
                    "image_id_duplicate",
                    im,
                    "id",
                    f"id {im['id']} is also the id of {by_id[im['id']].get('file_name')}",
                )
                self.bad_images.add(im["id"])
                continue
            by_id[im["id"]] = im
            for k in bad:
                self.add(
                    "image_record",
                    im,
                    k,
                    f"{im.get(k)!r} is not a " + ("file name" if k == "file_name" else "positive integer"),
                )
            if bad:
                self.bad_images.add(im["id"])
        return by_id

    def _check_annotations(self, anns: list, by_id: dict, categories, masks: bool) -> None:
        """Each annotation against its image record (not those of an image already bad); ids to
        renumber, iscrowd to fill."""
        cat_ids = {c["id"]: len(c.get("keypoints") or ()) for c in categories}  # -> keypoints per object
        bad_records = set(self.bad_images)  # their annotations are not checked further
        ids_seen: set = set()
        for j, a in enumerate(anns):
            if not isinstance(a, dict):
                self.add("annotation_record", None, f"annotations[{j}]", f"{a!r} is not an annotation record")
                self.bad_anns.add(j)
                continue
            aid = a.get("id")
            if not is_int(aid) or aid == 0 or aid in ids_seen:
                self.renumber = True
            else:
                ids_seen.add(aid)
            if "iscrowd" not in a:  # COCOeval reads it: written as 0 in the prepared JSON
                self.crowd_filled += 1
            im = by_id.get(a.get("image_id")) if is_int(a.get("image_id")) else None
            if im is None:
                self.add("image_unknown", None, f"annotation {aid}: image_id", f"{a.get('image_id')!r} names no image")
                self.bad_anns.add(j)
                continue
            if im["id"] in bad_records:
                continue
            for kind, field, message in annotation_problems(a, im, cat_ids, masks):
                self.add(kind, im, f"annotation {aid}: {field}", message)
                self.bad_images.add(im["id"])

    def _check_headers(self, images: list[dict]) -> None:
        paths = [self.images_dir / im["file_name"] for im in images]
        with ThreadPoolExecutor(HEADER_THREADS) as pool:
            for im, got in zip(images, pool.map(_header, paths, chunksize=64)):
                if isinstance(got[0], str):
                    self.add(got[0], im, "file_name", got[1])
                    self.bad_images.add(im["id"])
                    continue
                w, h, orientation = got
                self.rotated += orientation in SWAPS_SIDES
                if (w, h) != (im["width"], im["height"]):
                    turned = f" after EXIF orientation {orientation}" if orientation != 1 else ""
                    self.add(
                        "image_size_mismatch",
                        im,
                        "width/height",
                        f"the file is {w}x{h}{turned}, the record says width {im['width']}, height {im['height']}",
                    )
                    self.bad_images.add(im["id"])

    def cleaned(self) -> tuple[dict, dict]:
        """(the split without what is bad, renumbered if needed; counts of what was dropped)."""
        images = [
            im
            for i, im in enumerate(self.coco["images"])
            if ("index", i) not in self.bad_images and not (isinstance(im, dict) and im.get("id") in self.bad_images)
        ]
        # a duplicate id drops both records: which of them the annotations meant is unknown
        kept = {im["id"] for im in images}
        anns = [a for j, a in enumerate(self.coco["annotations"]) if j not in self.bad_anns and a["image_id"] in kept]
        if self.renumber:
            anns = [{**a, "id": k + 1} for k, a in enumerate(anns)]
            self.renumbered = len(anns)
        if self.crowd_filled:
            anns = [a if "iscrowd" in a else {**a, "iscrowd": 0} for a in anns]
        dropped = {
            "images": len(self.coco["images"]) - len(images),
            "annotations": len(self.coco["annotations"]) - len(anns),
        }
        return {**self.coco, "images": images, "annotations": anns}, dropped

    def report(self, dropped: dict) -> dict:
        return {
            "annotations_file": self.ann_path,
            "images_dir": str(self.images_dir),
            "images": len(self.coco["images"]),
            "annotations": len(self.coco["annotations"]),
            "problems": {k: {"count": self.counts[k], "examples": self.examples[k]} for k in sorted(self.counts)},
            "dropped": dropped,
            "renumbered_annotation_ids": self.renumbered,
            "exif_rotated_images": self.rotated,
            "iscrowd_filled": self.crowd_filled,
        }


def validate(name: str, splits: dict, categories: list, on_bad_data: str, out_dir, masks: bool | None = None):
    """Check each split of dataset `name`: `splits` maps split -> (COCO dict, images folder,
    annotation file). `masks` None: decided from the data (:func:`has_masks` over all splits).
    Writes `out_dir`/validation.json and prints its summary line; raises DatasetError under
    on_bad_data error if anything is bad. Returns ({split: (COCO dict, changed)}, masks): a
    changed dict must be written to the prepared JSON; an unchanged one is the input object."""
    if on_bad_data not in ON_BAD_DATA:
        raise DatasetError(f"datasets.{name}.on_bad_data: {on_bad_data!r} is not one of {', '.join(ON_BAD_DATA)}")
    first = next(iter(splits.values()))[2]
    _check_categories(categories, first)
    ids = {c["id"] for c in categories}
    for coco, _, ann_path in splits.values():  # evaluation reads each split's own list (COCOeval's catIds)
        cats = coco.get("categories", categories) if isinstance(coco, dict) else categories
        _check_categories(cats, ann_path)
        extra = sorted({c["id"] for c in cats} - ids)
        if extra:
            raise DatasetError(f"{ann_path}: categories: ids {extra} are not among the categories of {first}")
    if masks is None:
        masks = any(has_masks(coco.get("annotations") or []) for coco, _, _ in splits.values())
    checked = {}
    for split, (coco, images_dir, ann_path) in splits.items():
        s = Split(split, coco, images_dir, ann_path)
        s.check(categories, masks)
        checked[split] = s
    out, reports = {}, {}
    for split, s in checked.items():
        if s.counts and on_bad_data == "error":
            dropped = {"images": 0, "annotations": 0}
            out[split] = (s.coco, False)
        else:
            cleaned, dropped = s.cleaned()
            changed = bool(s.renumber or s.crowd_filled or dropped["images"] or dropped["annotations"])
            out[split] = (cleaned if changed else s.coco, changed)
        reports[split] = s.report(dropped)
    report = {
        "dataset": name,
        "on_bad_data": on_bad_data,
        "masks": bool(masks),
        "problem_kinds": PROBLEMS,
        "splits": reports,
    }
    write_json_atomic(Path(out_dir) / REPORT, report, indent=1, sort_keys=True)
    print(f"prepare_data: {name}: validation: {summary(report)} (report {Path(out_dir) / REPORT})", flush=True)
    emptied = [s for s in checked.values() if s.coco["images"] and not out[s.name][0]["images"]]
    if emptied:
        raise DatasetError(
            f"{emptied[0].ann_path}: on_bad_data skip dropped every one of its "
            f"{len(emptied[0].coco['images'])} images (see {Path(out_dir) / REPORT})"
        )
    bad = [s for s in checked.values() if s.counts]
    if bad and on_bad_data == "error":
        counts = "; ".join(f"{s.name}: " + ", ".join(f"{n} {k}" for k, n in sorted(s.counts.items())) for s in bad)
        raise DatasetError(
            f"{bad[0].first} ({counts}; every problem is in {Path(out_dir) / REPORT}; "
            f"fix the data, or set datasets.{name}.on_bad_data: skip to drop the bad images)"
        )
    return out, bool(masks)


def _check_categories(categories, ann_path) -> None:
    """A list of mappings with integer ids, each given once; raises DatasetError naming the file."""
    if not isinstance(categories, list):
        raise DatasetError(
            f"{ann_path}: categories: {type(categories).__name__} {str(categories)[:60]!r} is not a list"
        )
    for i, c in enumerate(categories):
        if not (isinstance(c, dict) and is_int(c.get("id"))):
            raise DatasetError(f"{ann_path}: categories[{i}]: {str(c)[:80]} has no integer id")
        kp = c.get("keypoints")
        if kp is not None and not (isinstance(kp, list) and all(isinstance(n, str) for n in kp)):
            raise DatasetError(f"{ann_path}: categories[{i}].keypoints: {str(kp)[:80]} is not a list of keypoint names")
    ids = [c["id"] for c in categories]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise DatasetError(f"{ann_path}: categories: ids {dup} are given twice")


def summary(report: dict) -> str:
    """One line: per split the images and annotations read, problems, drops and renumbering."""
    parts = []
    for split, r in report["splits"].items():
        n = sum(p["count"] for p in r["problems"].values())
        kinds = ", ".join(f"{p['count']} {k}" for k, p in r["problems"].items())
        line = f"{split} {r['images']} images, {r['annotations']} annotations: "
        line += f"{n} problems ({kinds})" if n else "no problems"
        if r["dropped"]["images"] or r["dropped"]["annotations"]:
            line += f", dropped {r['dropped']['images']} images and {r['dropped']['annotations']} annotations"
        if r["renumbered_annotation_ids"]:
            line += f", annotation ids renumbered 1..{r['renumbered_annotation_ids']}"
        parts.append(line)
    return "; ".join(parts)
