"""Shared fixtures: a tiny toy VOC set and a tiny training config, built once per session."""
from __future__ import annotations

import pytest
import torch

from data.toy_voc import generate

TINY = """\
_base_: {base}
run:
  session_name: {out}/run
  seed: 7
  threads: 1
data:
  voc12_root: {voc}
  train_list: "{{voc12_root}}/ImageSets/Segmentation/train_aug.txt"
  val_list: "{{voc12_root}}/ImageSets/Segmentation/train.txt"
  infer_list: "{{voc12_root}}/ImageSets/Segmentation/val.txt"
  cls_labels: "{{voc12_root}}/cls_labels.npy"
  crop_size: 64
  view_size: 32
  resize_long: [64, 96]
  view_min_side: 64
  num_workers: 0
model:
  backbone: resnet18
  backbone_width: 0.25
  backbone_strides: [2, 2, 1]
  trainable_bn: true
  imagenet_required: false
train:
  batch_size: 4
  max_epoches: 2
  lr: 1.0e-3
  MaxmIou: 0.0
schedule:
  imc_start: 0
  mix_start: 0
  aug_start: 1
  pixpro_start: 1
  emd_start: 1
plmix:
  crf_workers: 0
eval:
  infer_scales: [0.75, 1.0]
irn:
  ir_crf: false
  ir_label_workers: 0
  irn_backbone: resnet18
  irn_backbone_width: 0.25
  irn_crop_size: 64
  irn_train_radius: 5
  irn_batch_size: 4
  irn_num_epoches: 1
  irn_log_every: 100
  irn_checkpoint_every: 0
seg:
  seg_arch: toy
  seg_toy_width: 0.25
  seg_val_list: "{{voc12_root}}/ImageSets/Segmentation/train.txt"
  mask_type: png
  seg_crop_size: 64
  seg_batch_size: 4
  seg_num_epoches: 1
  seg_lr: 1.0e-3
  beacon_k: 8
  seg_log_every: 100
  seg_checkpoint_every: 0
  seg_scales: [1.0]
"""


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tiny tensors: threads cost more than they give, and results
    yield                     # must not depend on the thread count


@pytest.fixture(scope="session")
def toy_voc(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "voc"
    generate(out, seed=11, n_train_aug=12, n_train=4, n_val=4)
    return out


@pytest.fixture
def tiny_config(toy_voc, tmp_path):
    from tool.common.config import BASE_CONFIG

    p = tmp_path / "tiny.yaml"
    p.write_text(TINY.format(base=BASE_CONFIG, out=tmp_path, voc=toy_voc))
    return p


@pytest.fixture
def trained(tiny_config, tmp_path):
    """A checkpoint of one MCL-only epoch on the tiny set: last.ckpt in the real format."""
    import train_mcl

    train_mcl.main(["--config", str(tiny_config), "--session_name", str(tmp_path / "run"),
                    "--max_epoches", "1", "--plmix", "False"])
    return tmp_path / "run" / "last.ckpt"

