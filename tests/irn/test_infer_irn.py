"""Stage-2 pseudo labels (METHOD.md 13.6): ``infer_irn.py`` on the toy VOC set, with a small
randomly initialised IRN and CAM dicts made from the toy masks."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import infer_irn as entry
from data.voc import load_img_name_list, load_mask
from net.irn_net import IRNet
from tests.irn.cams import soft_cams
from tool.common.errors import UserError
from tool.common.fileio import save_npy_dict
from tool.common.preflight import PreflightError
from tool.irn.infer import irn_architecture

CROP = 64  # the toy IRN's "training crop": inference pads to it (or to the side, above it)


@pytest.fixture(scope="module")
def shared(toy_voc, tmp_path_factory):
    """(voc root, names of the toy train list, CAM folder, IRN checkpoint), made once."""
    base = tmp_path_factory.mktemp("infer_irn")
    names = load_img_name_list(toy_voc / "ImageSets/Segmentation/train.txt")
    cam_dir = base / "cams"
    for n in names:
        save_npy_dict(cam_dir / f"{n}.npy",
                      soft_cams(load_mask(toy_voc / "SegmentationClass" / f"{n}.png")))
    torch.manual_seed(0)
    model = IRNet(backbone="resnet18", backbone_width=0.25, crop_size=CROP)
    weights = base / "irn.ckpt"
    torch.save({"model": model.state_dict(), "epoch": 3}, weights)  # the engine's format
    return toy_voc, names, cam_dir, weights


@pytest.fixture
def toy(shared, tmp_path):
    """The shared inputs with a CAM folder and list of this test's own (tests may damage them)."""
    voc, names, cam_dir, weights = shared
    own = tmp_path / "cams"
    shutil.copytree(cam_dir, own)
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(names) + "\n")
    return voc, names, own, weights, lst


def infer(toy, out, *extra, names=None):
    voc, all_names, cam_dir, weights, lst = toy
    if names is not None:
        lst = lst.with_name("sub.txt")
        lst.write_text("\n".join(names) + "\n")
    argv = ["--voc12_root", str(voc), "--infer_list", str(lst), "--cam_dir", str(cam_dir),
            "--irn_weights_name", str(weights), "--sem_seg_out_dir", str(out),
            "--irn_crop_size", str(CROP), "--device", "cpu", "--threads", "1", *extra]
    return entry.main(argv)


def read_png(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "P"
        return np.array(im)


def pngs(folder) -> dict[str, np.ndarray]:
    return {p.stem: read_png(p) for p in sorted(folder.glob("*.png"))}


def test_writes_labels_and_soft_maps(toy, tmp_path):
    voc, names, *_ = toy
    out = tmp_path / "sem_seg"
    assert infer(toy, out, "--soft_output", "1") == len(names)
    labels = pngs(tmp_path / "sem_seg_png")
    assert sorted(labels) == sorted(names)
    for n, label in labels.items():
        with Image.open(voc / "JPEGImages" / f"{n}.jpg") as im:
            assert label.shape == (im.height, im.width)
        assert set(np.unique(label)) <= set(range(21))
        soft = np.load(out / f"{n}.npy")
        assert soft.dtype == np.float16 and soft.shape == (*label.shape, 21)
        assert np.isfinite(soft).all() and (soft[..., 0] == np.float16(0.35)).all()
        # the label is a maximum of the soft map (float16 rounding may create ties)
        picked = np.take_along_axis(soft, label[..., None].astype(np.intp), -1)[..., 0]
        np.testing.assert_array_equal(picked, soft.max(-1))
        keys = set(np.load(toy[2] / f"{n}.npy", allow_pickle=True).item())
        assert set(np.unique(label)) <= {0} | {k + 1 for k in keys}
    record = json.loads((tmp_path / "sem_seg_png" / ".provenance.json").read_text())
    s = record["outputs"]["sem_seg_png"]
    assert (s["beta"], s["exp_times"], s["sem_seg_bg_thres"]) == (8.0, 3, 0.35)  # toy.yaml
    assert len(s["irn_weights_sha256"]) == 64 and "rw_engine" not in s


def test_resume_skips_done_images(toy, tmp_path):
    _, names, *_ = toy
    out = tmp_path / "sem_seg"
    assert infer(toy, out, names=names[:2]) == 2
    first = (tmp_path / "sem_seg_png" / f"{names[0]}.png").stat().st_mtime_ns
    assert infer(toy, out) == len(names) - 2
    assert (tmp_path / "sem_seg_png" / f"{names[0]}.png").stat().st_mtime_ns == first
    assert infer(toy, out) == 0


def test_other_settings_refused_unless_overwrite(toy, tmp_path):
    _, names, *_ = toy
    out = tmp_path / "sem_seg"
    infer(toy, out, names=names[:1])
    before = pngs(tmp_path / "sem_seg_png")
    with pytest.raises(UserError, match=r"other settings \(beta 8.0 -> 10.0\).*--overwrite"):
        infer(toy, out, "--beta", "10", names=names[:1])
    assert pngs(tmp_path / "sem_seg_png").keys() == before.keys()
    # the engine is no setting: the same labels either way
    assert infer(toy, out, "--rw_engine", "dense", names=names[:1]) == 0
    assert infer(toy, out, "--beta", "10", "--overwrite", names=names[:1]) == 1
    rec = json.loads((tmp_path / "sem_seg_png" / ".provenance.json").read_text())
    assert rec["outputs"]["sem_seg_png"]["beta"] == 10.0


def test_preset_irn_sets_walk_parameters(toy, tmp_path):
    _, names, *_ = toy
    infer(toy, tmp_path / "s", "--irn_preset", "irn", "--exp_times", "2", names=names[:1])
    rec = json.loads((tmp_path / "s_png" / ".provenance.json").read_text())["outputs"]
    assert (rec["sem_seg_png"]["beta"], rec["sem_seg_png"]["exp_times"],
            rec["sem_seg_png"]["sem_seg_bg_thres"]) == (10.0, 2, 0.25)
    assert rec["sem_seg_png"]["label_png"] == "gray"
    with Image.open(tmp_path / "s_png" / f"{names[0]}.png") as im:
        assert im.mode == "L"


def test_dense_and_sparse_engines_agree(toy, tmp_path):
    _, names, *_ = toy
    small = names[:1]  # 132 x 133: a 34 x 33 grid, quick for the dense (hw)^2 walk
    infer(toy, tmp_path / "d", "--rw_engine", "dense", names=small)
    infer(toy, tmp_path / "s", "--rw_engine", "sparse", names=small)
    infer(toy, tmp_path / "p", "--edge_grid_cams", "present", names=small)
    dense = pngs(tmp_path / "d_png")
    assert dense and dense.keys() == pngs(tmp_path / "s_png").keys()
    for n in dense:
        np.testing.assert_array_equal(dense[n], pngs(tmp_path / "s_png")[n])
        np.testing.assert_array_equal(dense[n], pngs(tmp_path / "p_png")[n])


@pytest.mark.parametrize("layout", ["all20", "present"])
def test_coco_keys_give_the_voc_labels_renamed(toy, tmp_path, layout):
    """``--num_classes 81``: CAM keys moved up by 60 (up to 79) give the VOC keys' labels moved
    up by 60 and soft maps of 81 channels holding the VOC ones there, in either CAM layout
    (all classes: 80 channels); under the default 21 the same dict is refused."""
    _, names, cam_dir, *_ = toy
    n = names[0]
    infer(toy, tmp_path / "voc", "--soft_output", "1", "--edge_grid_cams", layout, names=[n])
    cams = np.load(cam_dir / f"{n}.npy", allow_pickle=True).item()
    save_npy_dict(cam_dir / f"{n}.npy", {k + 60: v for k, v in cams.items()})
    with pytest.raises(UserError, match=r"dict key 6\d is not a class index 0\.\.19"):
        infer(toy, tmp_path / "coco", "--soft_output", "1", names=[n])
    infer(toy, tmp_path / "coco", "--soft_output", "1", "--edge_grid_cams", layout,
          "--num_classes", "81", names=[n])
    voc, coco = read_png(tmp_path / "voc_png" / f"{n}.png"), \
        read_png(tmp_path / "coco_png" / f"{n}.png")
    assert np.array_equal(coco, np.where(voc > 0, voc + 60, 0)) and (coco > 60).any()
    voc_soft, coco_soft = np.load(tmp_path / "voc" / f"{n}.npy"), \
        np.load(tmp_path / "coco" / f"{n}.npy")
    assert coco_soft.shape == (*voc.shape, 81) and coco_soft.dtype == np.float16
    present = [k + 1 for k in sorted(cams)]
    np.testing.assert_allclose(coco_soft[..., [0] + [c + 60 for c in present]].astype(float),
                               voc_soft[..., [0] + present].astype(float), rtol=1e-3, atol=1e-6)
    assert not np.delete(coco_soft, [0] + [c + 60 for c in present], axis=-1).any()


@pytest.mark.parametrize("cams", [{}, "zeros"])
def test_empty_or_zero_cams_give_background(toy, tmp_path, cams):
    voc, names, cam_dir, *_ = toy
    n = names[0]
    if cams == "zeros":
        cams = {k: np.zeros_like(v) for k, v in
                np.load(cam_dir / f"{n}.npy", allow_pickle=True).item().items()}
    save_npy_dict(cam_dir / f"{n}.npy", cams)
    infer(toy, tmp_path / "s", "--soft_output", "1", names=[n])
    assert (read_png(tmp_path / "s_png" / f"{n}.png") == 0).all()
    soft = np.load(tmp_path / "s" / f"{n}.npy")
    assert np.isfinite(soft).all() and (soft[..., 1:] == 0).all()


@pytest.mark.parametrize("bad, match", [
    ({20: np.zeros((4, 4), np.float32)}, r"dict key 20 is not a class index 0\.\.19"),
    ({3: np.zeros((4, 4), np.float32)}, r"map of class 3 is 4x4 but the image is"),
])
def test_bad_cam_dict_is_one_line_and_nothing_written(toy, tmp_path, bad, match):
    _, names, cam_dir, *_ = toy
    save_npy_dict(cam_dir / f"{names[0]}.npy", bad)
    with pytest.raises(UserError, match=match) as e:
        infer(toy, tmp_path / "s", "--soft_output", "1", names=names[:1])
    assert "\n" not in str(e.value) and str(cam_dir / f"{names[0]}.npy") in str(e.value)
    assert not list((tmp_path / "s_png").glob(f"{names[0]}*"))
    assert not list((tmp_path / "s").glob(f"*{names[0]}*"))


def test_missing_cam_file_before_compute(toy, tmp_path):
    _, names, cam_dir, *_ = toy
    (cam_dir / f"{names[1]}.npy").unlink()
    with pytest.raises(PreflightError, match=rf"CAM files missing from .*: {names[1]}\.npy"):
        infer(toy, tmp_path / "s")
    assert not (tmp_path / "s_png").exists()


def test_list_of_another_cam_folder_is_one_line(toy, tmp_path):
    _, names, cam_dir, *_ = toy
    for p in cam_dir.glob("*.npy"):
        p.rename(p.with_name("x" + p.name))
    with pytest.raises(PreflightError) as e:
        infer(toy, tmp_path / "s")
    assert str(e.value).count("\n") == 0
    assert f"holds none of the {len(names)} images" in str(e.value)


def test_all_problems_together(toy, tmp_path):
    _, names, cam_dir, weights, _ = toy
    (cam_dir / f"{names[0]}.npy").unlink()
    with pytest.raises(PreflightError) as e:
        infer(toy, tmp_path / "s", "--irn_weights_name", str(tmp_path / "none.ckpt"))
    assert "preflight found 2 problems" in str(e.value)
    assert "--irn_weights_name file not found" in str(e.value)


def test_weights_of_another_layout_is_one_line(toy, tmp_path):
    bad = tmp_path / "bad.ckpt"
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, bad)
    with pytest.raises(UserError, match="does not fit the IRN network") as e:
        infer(toy, tmp_path / "s", "--irn_weights_name", str(bad))
    assert "\n" not in str(e.value)
    assert not list((tmp_path / "s_png").glob("*.png"))


def test_output_folder_must_not_be_the_cam_folder(toy, tmp_path):
    cam_dir = toy[2]
    with pytest.raises(PreflightError, match="is an input folder"):
        infer(toy, cam_dir, "--soft_output", "1")


def test_architecture_from_state_dict():
    model = IRNet(backbone="resnet18", backbone_width=0.25, crop_size=CROP)
    state = model.state_dict()
    assert irn_architecture(state) == ("resnet18", 0.25)
    june = {k: v for k, v in state.items() if not k.startswith("resnet18.")}
    assert irn_architecture(june) == ("resnet18", 0.25)
    assert irn_architecture({"fc_edge1.0.weight": torch.zeros(1)}) == ("resnet50", 1.0)


def test_run_refine_calls_the_four_steps(tmp_path):
    """run_refine.sh with a stand-in interpreter that records each step's command line (the
    config lookup runs for real): CAMs of train_aug, IR labels, IRN training, random walk,
    PNG evaluation."""
    from tests.utils import run_script_steps

    calls = run_script_steps("run_refine.sh", ["--beta", "9"], tmp_path)
    assert [c.split()[0] for c in calls] == ["infer_cam.py", "make_ir_labels.py",
                                             "train_irn.py", "infer_irn.py", "eval_cam.py"]
    assert "train_aug.txt" in calls[0] and "--out_npy runs/toy/infer_train/npy_sgc" in calls[0]
    assert "--beta" not in calls[0]  # a stage-2 flag: infer_cam.py would refuse it
    for c in calls[1:3]:
        assert "--cam_dir runs/toy/infer_train/npy_sgc" in c and c.endswith("--beta 9")
    assert "--cam_dir runs/toy/infer/npy_sgc" in calls[3]
    assert "--predict_dir runs/toy/sem_seg_png" in calls[4] and "--type png" in calls[4]
    assert "--num_classes 21" in calls[4]  # the evaluator scores the config's class count


def test_presets_reach_every_walk_key():
    """Every inference field of a preset is a key of base.yaml's irn section (so
    ``--irn_preset`` sets it), with the plmix value there (METHOD.md 13.6.6, 13.10)."""
    from tool.common.config import BASE_CONFIG, load_config
    from tool.irn.presets import get_preset

    section = load_config(BASE_CONFIG)["irn"]
    walk = ("beta", "exp_times", "sem_seg_bg_thres", "infer_radius", "rw_engine",
            "edge_grid_cams", "soft_output", "label_png", "pad_to_crop")
    plmix, irn = get_preset("plmix").flat(), get_preset("irn").flat()
    assert {k: section[k] for k in walk} == {k: plmix[k] for k in walk}
    assert (plmix["beta"], plmix["exp_times"], plmix["sem_seg_bg_thres"]) == (8.0, 6, 0.35)
    assert (irn["beta"], irn["exp_times"], irn["sem_seg_bg_thres"]) == (10.0, 8, 0.25)


def test_torchrun_rank_takes_its_share(toy, tmp_path, monkeypatch):
    _, names, *_ = toy
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert infer(toy, tmp_path / "s") == len(names[1::2])
    assert sorted(pngs(tmp_path / "s_png")) == sorted(names[1::2])


def test_classes_absent_from_the_image_label_are_warned(toy, tmp_path, capfd):
    """METHOD.md 13.9 Q27: the dict keys are used as they are, with a warning."""
    _, names, cam_dir, *_ = toy
    n = names[0]
    keys = sorted(np.load(cam_dir / f"{n}.npy", allow_pickle=True).item())
    labels = {m: np.zeros(20, np.float32) for m in names}
    labels[names[1]][sorted(np.load(cam_dir / f"{names[1]}.npy", allow_pickle=True).item())] = 1
    np.save(tmp_path / "cls_labels.npy", labels)
    infer(toy, tmp_path / "s", "--cls_labels", str(tmp_path / "cls_labels.npy"),
          names=names[:2])
    assert f"1 image(s) have CAM classes that their image-level label lacks (used as they " \
           f"are), e.g. {n}: classes {keys}" in capfd.readouterr().err
