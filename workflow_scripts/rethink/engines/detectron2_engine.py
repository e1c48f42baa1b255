# over 400 lines: the whole detectron2 engine; its data side is a 90-line adapter to detectron2's own pipeline.
"""The detectron2 engine (cluster path): detectron2's Mask R-CNN, data pipeline and weights,
driven by the project's own training loop (rethink.loop) and COCO evaluation (rethink.evaluate).

detectron2 is imported lazily, so this module imports (and the workflow dry-runs) without it;
using the engine without detectron2 raises RuntimeError with INSTALL_HINT.

What each interface method does (see rethink/engines/__init__.py):

* config(run, schedule, weights, dataset) -> CfgNode: get_cfg() + the model-zoo yaml of
  rethink.engines.detectron2_config.base_config_name + detectron2_config.overrides (the translation
  lives there and is tested without detectron2).
* build_model(run, device, distributed, dataset=None): detectron2.modeling.build_model(cfg),
  built on the CPU under a fork of the RNG seeded with the run's seed (detectron2's own init:
  MSRA fill, nothing frozen for scratch; ImageNet runs freeze stem + res2, FREEZE_AT 2, as
  detectron2's configs), then moved to `device`. `dataset` (the manifest) gives the number of
  classes (COCO's 80 without it). The CfgNode rides along as model.rethink_cfg. Norm "SyncBN" is torch's
  SyncBatchNorm (detectron2's "SyncBN") on
  GPU and detectron2's NaiveSyncBatchNorm ("naiveSyncBN_N": works with gloo, allows different
  batch sizes per process, as the RoI heads have) on CPU.
* load_init_weights: the workflow's own pre-training (init kind pretrain: torchvision-named
  ResNet bodies) is renamed to detectron2's ResNet and loaded strictly into backbone.bottom_up
  (load_torchvision_resnet; the run's config takes torchvision's RGB input normalisation, as
  detectron2's tools/convert-torchvision-to-d2.py says). Otherwise
  DetectionCheckpointer(model).load(path): ImageNet .pkl files in Caffe2
  (MSRA/FAIR) names, first checked with the staging step's restricted unpickler (numpy arrays and
  plain containers only), are renamed by detectron2's matching heuristics; a file that changes no
  backbone weight is an error. VGG16: the caffe VGG16 in Caffe2 blob names (conv1_1_w ...
  conv5_3_b, fc6_*, fc7_*; bare, or under "blobs" / "model") is loaded by name (see
  detectron2_backbones.load_vgg16_pkl): the convs into the backbone, fc6/fc7 into the box head's fc1/fc2 as the
  original Faster R-CNN initialises its head; fc8 (the classifier) is ignored.

VGG16 (the paper's section 5.1): the backbone and its weights are in
engines/detectron2_backbones.py.
* train_stream: batches of detectron2 dataset dicts, mapped by DatasetMapper(cfg, True)
  (ResizeShortestEdge + horizontal flip, masks as polygons), indexed by the project's sampler
  (rethink.sampling.batch_indices, with DATALOADER.ASPECT_RATIO_GROUPING rethink.sampling.GroupedBatches:
  wide and tall images in separate batches); an image's augmentation draws from numpy seeded by
  (seed, i, j). So batch i depends only on (seed, i): a run resumed at iteration i reads the same
  images, at the same scales and flips, as one that never stopped, at no cost (no skipping).
* load_converted(model, state_dict, from_task, run): the switch to cascade inside a run (Table 3
  from scratch: Mask R-CNN until cascade_from_iter, CascadeROIHeads after), mapped by
  rethink.weights.map_into_cascade.
* optimizer_param_groups(model, run) (optional for the loop): detectron2's parameter groups,
  no weight decay on norm layers, frozen parameters left out.
* losses: model(batch) in train mode inside a detectron2 EventStorage (its RPN and RoI heads
  log to the current storage and fail without one), so the loop needs nothing detectron2-specific.
* predict: eval mode over build_detection_test_loader(cfg, val set); outputs become COCO result
  dicts with detectron2's instances_to_coco_json (category ids mapped back to the dataset's);
  with several processes each predicts its share and all get the whole list.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import CheckpointError, unwrap
from ..sampling import GroupedBatches, aspect_groups, batch_indices, iteration_loader, seed_mix
from ..stage import StageError, check_weights_pickle
from ..weights import first_problems, map_into_cascade
from . import detectron2_config as d2config
from .detectron2_backbones import load_torchvision_resnet, load_vgg16_pkl, register_vgg16_backbone
from .detectron2_base_configs import DETECTRON2_COMMIT
from .detectron2_config import D2ConfigError

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "the detectron2 engine needs detectron2, which is on no package index: install it from source against the "
    "pinned torch (requirements.txt), e.g.\n"
    "  pip install -U pip && pip install -r requirements.txt\n"
    f"  pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git@{DETECTRON2_COMMIT}'\n"
    "or from a local clone: pip install --no-build-isolation /path/to/detectron2 "
    "(a C++/CUDA compiler and torch must already be installed; ~2 min). "
    "For CPU runs and CI use engine: torchvision."
)


def require_detectron2():
    """Import detectron2 or raise RuntimeError saying how to install it."""
    try:
        import detectron2  # noqa: F401
        from detectron2 import _C  # noqa: F401  (the compiled ops: a broken build fails here, not mid-run)
    except ImportError as e:
        raise RuntimeError(f"detectron2 is not importable ({e}); {INSTALL_HINT}") from None
    return detectron2


def config_file(name: str) -> str:
    """Path of a model-zoo yaml (e.g. "Misc/mask_rcnn_R_50_FPN_3x_gn.yaml") in the installed
    detectron2. Looked up beside the package rather than with model_zoo.get_config_file, which
    needs pkg_resources (gone from setuptools >= 81)."""
    d2 = require_detectron2()
    path = Path(d2.__file__).parent / "model_zoo" / "configs" / name
    if not path.is_file():
        raise RuntimeError(f"detectron2 at {Path(d2.__file__).parent} has no model-zoo config {name} ({path})")
    return str(path)


# the architecture switches load_converted knows: (checkpoint's task, model's task)
CONVERSIONS = (("mask_rcnn", "cascade_mask_rcnn"),)


def _set(cfg, key: str, value) -> None:
    node = cfg
    parts = key.split(".")
    for p in parts[:-1]:
        if p not in node:
            raise D2ConfigError(f"detectron2 config has no key {key} (detectron2 version?)")
        node = node[p]
    if parts[-1] not in node:
        raise D2ConfigError(f"detectron2 config has no key {key} (detectron2 version?)")
    old = node[parts[-1]]
    if isinstance(old, tuple):
        value = tuple(value)
    elif isinstance(old, list):
        value = list(value)
    node[parts[-1]] = value


def _get(cfg, key: str):
    node = cfg
    for p in key.split("."):
        node = node[p]
    return node


def _split(dataset: dict, split: str) -> tuple[str, str]:
    """(image dir, annotation json) of a manifest's split, checked."""
    entry = dataset.get(split)
    name = dataset.get("name", "?")
    if not isinstance(entry, dict) or "images" not in entry or "annotations" not in entry:
        raise D2ConfigError(
            f"dataset manifest {name!r}: field {split!r} must be {{images, annotations}}, got {entry!r}"
        )
    if not os.path.isfile(entry["annotations"]):
        raise D2ConfigError(f"dataset manifest {name!r}: {split}.annotations {entry['annotations']} does not exist")
    if not os.path.isdir(entry["images"]):
        raise D2ConfigError(f"dataset manifest {name!r}: {split}.images {entry['images']} is not a folder")
    return entry["images"], entry["annotations"]


_registered: dict[str, tuple[str, str]] = {}


def register(run: dict, dataset: dict) -> tuple[str, str]:
    """Register the manifest's train and val sets in detectron2's catalogs (under
    d2config.dataset_names); re-registers a name whose files changed. Returns the names."""
    require_detectron2()
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    names = d2config.dataset_names(run, dataset)
    for name, split in zip(names, ("train", "val")):
        image_root, json_file = _split(dataset, split)
        key = (os.path.abspath(image_root), os.path.abspath(json_file))
        if _registered.get(name) == key and name in DatasetCatalog.list():
            continue
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(name, {}, json_file, image_root)
        if dataset.get("keypoints"):
            from detectron2.data.datasets.builtin_meta import COCO_PERSON_KEYPOINT_FLIP_MAP, COCO_PERSON_KEYPOINT_NAMES

            MetadataCatalog.get(name).set(
                keypoint_names=COCO_PERSON_KEYPOINT_NAMES, keypoint_flip_map=COCO_PERSON_KEYPOINT_FLIP_MAP
            )
        _registered[name] = key
    return names


class SeededBatches(torch.utils.data.Dataset):
    """Item i = this process's part of global batch i: a list of mapped dataset dicts.

    The images of batch i are the project's (rethink.sampling): with aspect-ratio grouping
    (DATALOADER.ASPECT_RATIO_GROUPING, detectron2's default) GroupedBatches over the dicts'
    width > height groups, else batch_indices' seeded epochs; both depend on (seed, i) only.
    Process `rank` of `world` takes its b = batch / world images. The mapper's random
    augmentation (numpy's global RNG in detectron2) is seeded by (seed, i, j) around each call."""

    def __init__(self, dicts, mapper, seed: int, batch: int, rank: int, world: int, groups=None):
        """`groups`: each dict's aspect group (rethink.sampling.aspect_groups), or None: no grouping."""
        if batch % world:
            raise D2ConfigError(f"batch {batch} is not divisible by the {world} processes")
        self.dicts, self.mapper, self.seed = dicts, mapper, int(seed)
        self.batch, self.per_rank, self.rank, self.world = int(batch), int(batch) // world, int(rank), int(world)
        self.sampler = GroupedBatches(self.seed, self.batch, groups) if groups is not None else None

    def __len__(self) -> int:  # iterations are indexed without bound; the sampler decides
        return 2**62

    def indices(self, i: int) -> list[int]:
        """Indices into the dicts of this process's share of batch i."""
        if self.sampler is not None:
            return self.sampler.indices(i, self.rank, self.world)
        return batch_indices(self.seed, i, self.batch, len(self.dicts), self.rank, self.world)

    def __getitem__(self, i: int) -> list[dict]:
        out = []
        for j, idx in zip(range(self.rank * self.per_rank, (self.rank + 1) * self.per_rank), self.indices(i)):
            d = self.dicts[idx]
            state = np.random.get_state()
            np.random.seed(seed_mix(self.seed, i, j))
            try:
                mapped = self.mapper(d)
            finally:
                np.random.set_state(state)
            mapped["iteration"] = i
            out.append(mapped)
        return out


class Detectron2Engine:
    name = "detectron2"

    # ------------------------------------------------------------------ config
    def config(
        self,
        run: dict,
        schedule=None,
        weights: str | None = None,
        dataset: dict | None = None,
        device: torch.device | str | None = None,
    ):
        """The run's detectron2 CfgNode (frozen). `device` (cuda/cpu) only picks MODEL.DEVICE and,
        for SyncBN on CPU, the CPU-capable sync BN; the dict of d2config.resolved() is the rest."""
        require_detectron2()
        from detectron2.config import get_cfg

        register_vgg16_backbone()
        cfg = get_cfg()
        cfg.merge_from_file(config_file(d2config.base_config_name(run)))
        for key, value in d2config.overrides(run, schedule, weights, dataset).items():
            _set(cfg, key, value)
        if device is not None:
            dev = torch.device(device)
            cfg.MODEL.DEVICE = dev.type
            if dev.type != "cuda":
                for key in (
                    "MODEL.RESNETS.NORM",
                    "MODEL.FPN.NORM",
                    "MODEL.ROI_BOX_HEAD.NORM",
                    "MODEL.ROI_MASK_HEAD.NORM",
                ):
                    if _get(cfg, key) == "SyncBN":
                        _set(cfg, key, "naiveSyncBN_N")
        cfg.freeze()
        return cfg

    # ------------------------------------------------------------------ model
    def build_model(self, run: dict, device, distributed: bool = False, dataset: dict | None = None):
        """detectron2's model for the run, initialised from the run's seed, on `device`.
        `dataset` (the manifest) sets the number of classes; without it COCO's 80."""
        require_detectron2()
        from detectron2.modeling import build_model

        device = torch.device(device)
        cfg = self.config(run, None, None, dataset, device=device)
        cpu_cfg = cfg.clone()
        cpu_cfg.defrost()
        cpu_cfg.MODEL.DEVICE = "cpu"
        cpu_cfg.freeze()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(run["seed"]))
            model = build_model(cpu_cfg)  # initialised on the CPU: the same weights on any device
        model.to(device)
        model.rethink_cfg = cfg  # what predict() and the loaders use
        return model

    def load_init_weights(self, model, path: str, run: dict) -> None:
        require_detectron2()
        from detectron2.checkpoint import DetectionCheckpointer

        if not os.path.isfile(path):
            raise FileNotFoundError(f"init weights {path} (run {run.get('run_id', '?')}) do not exist")
        m = unwrap(model)
        if d2config.weights_style(run) == "torchvision":
            n = load_torchvision_resnet(m.backbone.bottom_up, path, run)
            log.info("loaded %d backbone tensors (torchvision names, renamed) from %s", n, path)
            return
        if d2config.is_vgg(run):
            n = load_vgg16_pkl(m, path, run)
            log.info("loaded %d VGG16 tensors from %s", n, path)
            return
        if path.endswith(".pkl"):  # detectron2 unpickles it plainly: first the staging step's restricted check
            try:
                check_weights_pickle(path)
            except StageError as e:
                raise CheckpointError(f"{path} (run {run.get('run_id', '?')}): {e}") from None
        before = {k: v.detach().clone() for k, v in m.backbone.bottom_up.state_dict().items() if k.endswith("weight")}
        DetectionCheckpointer(m).load(path)
        after = m.backbone.bottom_up.state_dict()
        changed = [k for k, v in before.items() if not torch.equal(v, after[k].to(v.device))]
        if not changed:
            raise RuntimeError(
                f"{path}: no backbone weight of run {run.get('run_id', '?')} was loaded from it (not detectron2/"
                f"Caffe2-named ResNet weights for {run['backbone']}-{run['norm']}?)"
            )
        log.info("loaded %d of %d backbone weight tensors from %s", len(changed), len(before), path)

    def load_converted(self, model, state_dict: dict, from_task: str, run: dict) -> str:
        """A checkpoint of another architecture into this run's model (the loop calls it for a
        segment whose start_task differs): today Mask R-CNN -> Cascade Mask R-CNN, mapped by
        rethink.weights.map_into_cascade. Returns a one-line report; raises ValueError naming
        the run and the tasks if the pair is not a known switch or the state dict does not fit
        (another backbone, another number of classes, ...). Nothing is copied unless everything
        fits."""
        to_task = run["recipe"].get("task", "mask_rcnn")
        who = f"run {run.get('run_id', '?')}"
        if (from_task, to_task) not in CONVERSIONS:
            raise ValueError(
                f"{who}: the detectron2 engine cannot convert a {from_task!r} checkpoint into a {to_task!r} "
                f"model (known switches: {', '.join(f'{a} -> {b}' for a, b in CONVERSIONS)})"
            )
        m = unwrap(model)
        stages = getattr(m.roi_heads, "num_cascade_stages", None)
        if not stages:
            raise ValueError(
                f"{who}: task {to_task!r}, but the model's RoI heads ({type(m.roi_heads).__name__}) are not a cascade"
            )
        target = m.state_dict()
        plan, fresh, dropped, problems = map_into_cascade(
            state_dict,
            target,
            stages,
            box_head="roi_heads.box_head.{k}.",
            cls_score="roi_heads.box_predictor.{k}.cls_score.",
            bbox_pred="roi_heads.box_predictor.{k}.bbox_pred.",
        )
        if problems:
            raise ValueError(
                f"{who}: the {from_task} checkpoint does not fit its {to_task} model "
                f"({run.get('backbone', '?')}-{run.get('norm', '?')}): {first_problems(problems)}"
            )
        with torch.no_grad():
            for t, s in plan.items():
                target[t].copy_(state_dict[s].to(device=target[t].device, dtype=target[t].dtype))
        copied = sum(1 for t, s in plan.items() if t == s)
        return (
            f"{copied} tensors copied by name, {len(plan) - copied} mapped into "
            f"{stages} cascade stages (box head + classifier), {len(fresh)} fresh (class-agnostic box "
            f"regressors), {len(dropped)} dropped (class-specific box regressor)"
        )

    def optimizer_param_groups(self, model, run: dict) -> list[dict]:
        """Parameter groups as detectron2's build_optimizer makes them: no weight decay on norm
        layers (SOLVER.WEIGHT_DECAY_NORM 0.0, as Detectron's WEIGHT_DECAY_GN), the recipe's on
        the rest. (Optional hook for the loop: with plain SGD over model.parameters() norm
        weights would be decayed too.)"""
        require_detectron2()
        from detectron2.solver.build import get_default_optimizer_params

        return get_default_optimizer_params(
            unwrap(model),
            base_lr=run["recipe"]["base_lr"],
            weight_decay=run["recipe"]["weight_decay"],
            weight_decay_norm=0.0,
        )

    # ------------------------------------------------------------------ data
    def train_stream(self, run: dict, dataset: dict, start_iter: int, rank: int = 0, world: int = 1):
        require_detectron2()
        from detectron2.data import DatasetFromList, DatasetMapper, get_detection_dataset_dicts

        cfg = self.config(run, None, None, dataset)
        register(run, dataset)
        min_kp = cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0
        dicts = get_detection_dataset_dicts(
            list(cfg.DATASETS.TRAIN), filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS, min_keypoints=min_kp
        )
        if not dicts:
            raise D2ConfigError(f"dataset {dataset.get('name')!r}: no training image with annotations")
        groups = (
            aspect_groups((d["width"], d["height"]) for d in dicts) if cfg.DATALOADER.ASPECT_RATIO_GROUPING else None
        )
        # serialised into one buffer, as detectron2's loaders do: forked workers share it instead
        # of copying 118k Python dicts each
        dicts = DatasetFromList(dicts, copy=False, serialize=True)
        ds = SeededBatches(
            dicts, DatasetMapper(cfg, is_train=True), run["seed"], cfg.SOLVER.IMS_PER_BATCH, rank, world, groups=groups
        )
        return iteration_loader(ds, start_iter, int(cfg.DATALOADER.NUM_WORKERS), run["seed"], rank)

    @staticmethod
    def count(batch: list[dict]) -> dict:
        return {
            "images": len(batch),
            "instances": sum(len(d["instances"]) for d in batch if "instances" in d),
            "pixels": sum(int(d["image"].shape[-2]) * int(d["image"].shape[-1]) for d in batch),
        }

    # ------------------------------------------------------------------ training step
    @staticmethod
    def losses(model, batch: list[dict]) -> dict:
        from detectron2.utils.events import EventStorage

        it = batch[0].get("iteration", 0) if batch else 0
        with EventStorage(it):  # detectron2's heads log to the current storage
            return dict(model(batch))

    # ------------------------------------------------------------------ evaluation
    def predict(self, model, run: dict, dataset: dict, device=None) -> list[dict]:
        require_detectron2()
        from detectron2.data import DatasetMapper, MetadataCatalog, build_detection_test_loader
        from detectron2.evaluation.coco_evaluation import instances_to_coco_json
        from detectron2.utils import comm

        m = unwrap(model)
        cfg = getattr(m, "rethink_cfg", None) or self.config(run, None, None, dataset, device=device)
        _, val_name = register(run, dataset)
        loader = build_detection_test_loader(cfg, val_name, mapper=DatasetMapper(cfg, is_train=False))
        meta = MetadataCatalog.get(val_name)
        to_dataset_id = {v: k for k, v in getattr(meta, "thing_dataset_id_to_contiguous_id", {}).items()}
        if not to_dataset_id:
            raise RuntimeError(
                f"detectron2 metadata of {val_name} has no category id map ({dataset['val']['annotations']})"
            )
        net = m
        if cfg.TEST.AUG.ENABLED:
            from detectron2.modeling import GeneralizedRCNNWithTTA

            net = GeneralizedRCNNWithTTA(cfg, m)
        was_training = m.training
        m.eval()
        results: list[dict] = []
        try:
            with torch.no_grad():
                for inputs in loader:
                    for inp, out in zip(inputs, net(inputs)):
                        if "instances" not in out:
                            continue
                        results += instances_to_coco_json(out["instances"].to("cpu"), inp["image_id"])
        finally:
            m.train(was_training)
        for r in results:
            r["category_id"] = to_dataset_id[r["category_id"]]
        if comm.get_world_size() > 1:
            # the default group (detectron2's comm.all_gather makes a gloo group of its own that
            # aborts the process at exit after destroy_process_group)
            parts: list = [None] * comm.get_world_size()
            torch.distributed.all_gather_object(parts, results)
            results = [r for part in parts for r in part]
        return results
