"""The two named settings of stage 2 (METHOD.md 13.10): ``plmix`` (the default: MuSCLe's
inference values, the IR-label thresholds its IRN weights were named after) and ``irn`` (the
values of IRN's ``run_sample.py``). Everything not listed differs in neither.

configs/base.yaml holds the ``plmix`` values. An entry point's ``--irn_preset NAME`` sets
every key of the preset that its config's ``irn`` section has, except those given on the
command line: flags > ``--irn_preset`` > config file > base.yaml.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from tool.irn.ir_labels import IRCRFParams

DEFAULT_PRESET = "plmix"


@dataclass(frozen=True)
class IRNPreset:
    """One column of the METHOD.md 13.10 table."""

    # IR labels (13.2)
    conf_fg: float
    conf_bg: float
    cam_source: str  # "handoff": stage-1 dicts (SGC maps); "high_res": IRN's make_cam dicts
    # inference (13.6)
    beta: float
    exp_times: int  # the walk takes 2 ** exp_times steps
    sem_seg_bg_thres: float
    # "all20" (the config value's name is VOC's): MuSCLe's all-classes layout, num_fg channels
    # (20 VOC, 80 COCO), absent ones zero; "present": IRN's K channels of the dict's classes
    edge_grid_cams: str
    rw_engine: str  # "dense" | "sparse" | "auto" (dense on CUDA, sparse on CPU)
    label_png: str  # "palette" (VOC colour map) | "gray"
    ir_crf: bool = True
    crf: IRCRFParams = field(default_factory=IRCRFParams)
    infer_radius: int = 5
    soft_output: bool = False
    pad_to_crop: bool = True
    # network and training (13.3-13.5): the same in both
    backbone: str = "resnet50"
    backbone_strides: tuple[int, ...] = (2, 2, 2, 1)
    crop_size: int = 512
    batch_size: int = 32
    epochs: int = 3
    lr: float = 0.1
    lr_mult_disp: float = 10.0
    weight_decay: float = 1e-4
    sgd_momentum: float = 1e-4  # IRN's quirk Q1: weight decay in SGD's momentum slot
    poly_power: float = 0.9
    rescale: tuple[float, float] = (0.5, 1.5)
    hflip: float = 0.5
    train_radius: int = 10
    train_displacement: bool = True

    def flat(self) -> dict[str, Any]:
        """Every value under its config key name (:data:`CONFIG_KEYS`); the CRF settings as
        ``ir_crf_*`` keys, tuples as lists (as YAML holds them)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "crf":
                out.update({CRF_KEYS.get(k, f"ir_crf_{k}"): v for k, v in asdict(value).items()})
                continue
            out[CONFIG_KEYS.get(f.name, f.name)] = list(value) if isinstance(value, tuple) \
                else value
        return out


# preset field -> config key where the two names differ (IRN's / MuSCLe's flag names)
CONFIG_KEYS = {"conf_fg": "conf_fg_thres", "conf_bg": "conf_bg_thres",
               "backbone": "irn_backbone", "crop_size": "irn_crop_size",
               "batch_size": "irn_batch_size", "epochs": "irn_num_epoches",
               "lr": "irn_learning_rate", "lr_mult_disp": "irn_lr_mult_disp",
               "weight_decay": "irn_weight_decay", "sgd_momentum": "irn_momentum",
               "poly_power": "irn_poly_power", "rescale": "irn_rescale",
               "train_radius": "irn_train_radius",
               "train_displacement": "irn_train_displacement"}
CRF_KEYS = {"n_iters": "ir_crf_iters"}  # IRCRFParams field -> config key, else ir_crf_<field>

PRESETS: dict[str, IRNPreset] = {
    "plmix": IRNPreset(conf_fg=0.40, conf_bg=0.10, cam_source="handoff", beta=8.0,
                       exp_times=6, sem_seg_bg_thres=0.35, edge_grid_cams="all20",
                       rw_engine="auto", label_png="palette"),
    "irn": IRNPreset(conf_fg=0.30, conf_bg=0.05, cam_source="high_res", beta=10.0,
                     exp_times=8, sem_seg_bg_thres=0.25, edge_grid_cams="present",
                     rw_engine="dense", label_png="gray"),
}


def get_preset(name: str) -> IRNPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: one of {', '.join(PRESETS)}")
    return PRESETS[name]


def add_preset_argument(parser: argparse.ArgumentParser) -> None:
    """``--irn_preset NAME``, for ``parse_config_args(..., extra=...)``."""
    parser.add_argument("--irn_preset", choices=sorted(PRESETS), default=None,
                        help="set every stage-2 key of this preset (METHOD.md 13.10: plmix = "
                             "base.yaml's values, irn = IRN's) that is not given as a flag")


IRN_SECTIONS = ["run", "data", "irn"]  # the config sections of the stage-2 entry points


def parse_stage2_args(argv: list[str], doc: str, overwrite_help: str,
                      resume_help: str | None = None) -> argparse.Namespace:
    """The flags of a stage-2 entry point: its config sections, ``--irn_preset``,
    ``--overwrite`` and, for a trainer (``resume_help``), ``--resume [CKPT]``."""
    from tool.common.config import parse_entry_args

    return parse_entry_args(argv, IRN_SECTIONS, doc, overwrite_help, resume_help,
                            add_preset_argument)


def apply_preset(args: argparse.Namespace, name: str | None, section: str = "irn"
                 ) -> list[str]:
    """Set the preset's values on ``args`` (a resolved config) and in its ``config_dict``, for
    the keys of ``section`` the command line did not give (``args.given``). Returns the keys
    set; ``name`` None sets nothing."""
    if name is None:
        return []
    values = get_preset(name).flat()
    body = args.config_dict.get(section, {})
    given = getattr(args, "given", frozenset())
    keys = [k for k in body if k in values and k not in given]
    for k in keys:
        body[k] = values[k]
        setattr(args, k, values[k])
    return keys
