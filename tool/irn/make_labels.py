"""The IR labels of a whole image list (METHOD.md 13.2.5): ``make_ir_labels``.

One palettised PNG per image, written atomically (a temporary name, then a rename), so that
"the PNG exists" means "finished": a rerun skips those images and a killed run loses only the
images in flight. Before any compute, every problem of the inputs is reported together (missing
CAM files and images, an unusable output folder, a folder holding labels of other settings).
Images run in worker processes that exit with this process; an image that fails does not stop
the others, and the failures come back as one line naming the file.
"""
from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Mapping, Sequence
from concurrent.futures import as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from data.voc import NUM_CLASSES, image_path, load_image, save_label_png
from tool.common.errors import UserError
from tool.common.preflight import Problems, check_output_folder
from tool.common.provenance import differences, read_provenance, write_provenance
from tool.common.workers import shutdown_pool, worker_pool
from tool.eval.evaluation import load_cam_dict
from tool.irn.ir_labels import IRCRFParams, cam_to_ir_label

log = logging.getLogger("plmix")

KIND = "ir_label"  # the output kind .provenance.json records


@dataclass(frozen=True)
class LabelJob:
    """One image's inputs, output and settings (picklable, sent to a worker)."""

    name: str
    img_path: Path
    cam_path: Path
    out_path: Path
    conf_fg: float
    conf_bg: float
    crf: bool
    crf_params: IRCRFParams
    num_classes: int  # with background: CAM dict keys 0..num_classes - 2


@dataclass(frozen=True)
class LabelResult:
    """What a worker sends back: the dict's class keys, or why the image failed (``error``:
    one line for bad input; ``trace``: a bug's traceback)."""

    name: str
    keys: tuple[int, ...] = ()
    error: str | None = None
    trace: str | None = None


def label_one(job: LabelJob) -> tuple[int, ...]:
    """Read, label and write one image; returns its CAM classes (0-based keys)."""
    img = np.asarray(load_image(job.img_path), np.uint8)
    cams = load_cam_dict(job.cam_path)
    label = cam_to_ir_label(img, cams, job.conf_fg, job.conf_bg, crf=job.crf,
                            crf_params=job.crf_params, where=str(job.cam_path),
                            num_classes=job.num_classes)
    keys = np.asarray(cams["keys"]).reshape(-1).tolist() if "keys" in cams else list(cams)
    try:
        save_label_png(label, job.out_path)
    except OSError as e:
        raise UserError(f"cannot write {job.out_path}: {e.strerror or e}") from None
    return tuple(int(k) for k in keys)


def run_job(job: LabelJob) -> LabelResult:
    """:func:`label_one` with its exception returned as a value, never raised across the pool
    (so no result is lost and nothing waits on a dead job)."""
    try:
        return LabelResult(job.name, keys=label_one(job))
    except UserError as e:
        return LabelResult(job.name, error=" ".join(str(e).split()))
    except Exception as e:  # noqa: BLE001 - a bug: the parent shows its traceback
        return LabelResult(job.name, error=f"{job.cam_path}: {type(e).__name__}: {e}",
                           trace=traceback.format_exc())


def label_settings(voc12_root: str | os.PathLike, cam_dir: str | os.PathLike, conf_fg: float,
                   conf_bg: float, crf: bool, crf_params: IRCRFParams) -> dict[str, Any]:
    """What the PNGs of a folder depend on (its ``.provenance.json`` record). The list is no
    setting: another list with the same settings adds to the folder. Nor is the class count:
    it only bounds the CAM keys, and ``voc12_root`` tells the data sets apart."""
    return {"conf_fg": float(conf_fg), "conf_bg": float(conf_bg),
            "crf": asdict(crf_params) if crf else None,
            "cam_dir": str(Path(cam_dir).resolve()),
            "voc12_root": str(Path(voc12_root).resolve())}


def _preflight(names: Sequence[str], voc12_root: Path, cam_dir: Path, out_dir: Path,
               settings: dict[str, Any], overwrite: bool) -> list[str]:
    """All problems at once, before any compute; returns the names still to do."""
    problems = Problems()
    check_output_folder(problems, out_dir, "--ir_label_out_dir")
    old = read_provenance(out_dir) if out_dir.is_dir() else None
    done = {n for n in names if (out_dir / f"{n}.png").is_file()}
    if not overwrite:
        if old is not None and KIND in old:
            diffs = differences(old[KIND], settings)
        else:
            diffs = ["its PNGs record no settings"] if done else []
        if diffs:
            problems.add(f"--ir_label_out_dir {out_dir} holds IR labels of other settings "
                         f"({'; '.join(diffs)}): add --overwrite to delete them first, or "
                         "choose another folder")
    todo = list(names) if overwrite else [n for n in names if n not in done]
    if not cam_dir.is_dir():
        problems.add(f"--cam_dir {cam_dir} is not a folder")
    else:
        problems.add_group(f"CAM files missing from {cam_dir}",
                           [f"{n}.npy" for n in todo if not (cam_dir / f"{n}.npy").is_file()])
    problems.add_group(f"images missing from {voc12_root / 'JPEGImages'}",
                       [f"{n}.jpg" for n in todo if not image_path(voc12_root, n).is_file()])
    problems.raise_if_any()
    return todo


def _remove_previous(out_dir: Path, names: Sequence[str]) -> None:
    """``overwrite``: every PNG of a folder this code wrote before (it has a record), else
    those of the listed names only (the folder may hold other files)."""
    owned = read_provenance(out_dir) is not None
    paths = out_dir.glob("*.png") if owned else (out_dir / f"{n}.png" for n in names)
    gone = 0
    for p in paths:
        if p.is_file():
            p.unlink()
            gone += 1
    if gone:
        log.info("--overwrite: removed %d IR label(s) of a previous run from %s", gone, out_dir)


def _results(jobs: list[LabelJob], workers: int, progress: bool):
    """Yield (job index, LabelResult) as images finish: in this process (workers <= 1) or in
    ``workers`` processes. Pending images are cancelled on an exception here (Ctrl-C); the
    ones running finish (their writes are atomic either way)."""
    bar = tqdm(total=len(jobs), desc="IR labels", disable=not progress)
    try:
        if workers <= 1:
            for i, job in enumerate(jobs):
                yield i, run_job(job)
                bar.update()
            return
        ex = worker_pool(min(workers, len(jobs)))
        try:
            futures = {ex.submit(run_job, job): i for i, job in enumerate(jobs)}
            for fut in as_completed(futures):
                try:
                    res = fut.result()
                except BrokenProcessPool as e:
                    raise RuntimeError("IR labels: a worker process died (killed, e.g. out of "
                                       "memory?); finished labels are kept, rerun to continue "
                                       "(or with fewer workers)") from e
                yield futures[fut], res
                bar.update()
        finally:
            shutdown_pool(ex)
    finally:
        bar.close()


def warn_absent_classes(done: Mapping[str, Sequence[int]],
                        cls_labels: Mapping[str, np.ndarray]) -> None:
    """METHOD.md 13.9 Q27: the dict keys are trusted; say when they name classes the
    image-level label lacks (e.g. CAM dicts of another list or data set). ``done``:
    {name: the 0-based keys of its CAM dict}."""
    extra = {}
    for name, keys in done.items():
        if name in cls_labels:
            label = np.asarray(cls_labels[name]).reshape(-1)
            bad = [k for k in keys if k < label.size and label[k] == 0]
            if bad:
                extra[name] = bad
    if extra:
        first = next(iter(extra))
        log.warning("%d image(s) have CAM classes that their image-level label lacks (used as "
                    "they are), e.g. %s: classes %s", len(extra), first, extra[first])


def make_ir_labels(names: Sequence[str], voc12_root: str | os.PathLike,
                   cam_dir: str | os.PathLike, out_dir: str | os.PathLike, conf_fg: float,
                   conf_bg: float, crf: bool = True,
                   crf_params: IRCRFParams | Mapping | None = None, workers: int = 0,
                   cls_labels: Mapping[str, np.ndarray] | None = None,
                   overwrite: bool = False, progress: bool = True, *,
                   num_classes: int = NUM_CLASSES) -> int:
    """Write ``<out_dir>/<name>.png`` (METHOD.md 13.2: uint8 H x W, values {0, 1..num_fg,
    255}, VOC palette; num_fg = num_classes - 1, 20 on VOC, 80 on COCO) for every name of the
    list whose PNG is not there yet; returns how many.

    Inputs: ``<voc12_root>/JPEGImages/<name>.jpg`` and ``<cam_dir>/<name>.npy`` (a hand-off or
    IRN-form CAM dict). conf_fg > conf_bg, crf, crf_params: as :func:`cam_to_ir_label`.
    ``workers`` > 1: that many processes. ``cls_labels`` ({name: (num_fg,) multi-hot}), optional:
    warn about dict keys the image-level label lacks. ``overwrite``: delete the folder's
    previous labels first (needed when they were made with other settings).

    Raises UserError before any compute for missing inputs (all of them in one message) or an
    unusable output folder, and after the run for images that failed (one line: how many, and
    the first one's error naming its file); the other images are written all the same.
    """
    names = list(names)
    if not conf_fg > conf_bg:
        raise UserError(f"the confident-foreground threshold ({conf_fg}) must be above the "
                        f"confident-background one ({conf_bg})")
    params = IRCRFParams.coerce(crf_params)
    voc12_root, cam_dir, out_dir = Path(voc12_root), Path(cam_dir), Path(out_dir)
    settings = label_settings(voc12_root, cam_dir, conf_fg, conf_bg, crf, params)
    todo = _preflight(names, voc12_root, cam_dir, out_dir, settings, overwrite)
    log.info("IR labels: %d images, %d already done, conf_fg %.2f, conf_bg %.2f, CRF %s -> %s",
             len(names), len(names) - len(todo), conf_fg, conf_bg, "on" if crf else "off",
             out_dir)
    if not todo:
        return 0
    # here, not at the top: runfolder imports torch, which the spawned workers (they import
    # this module) would otherwise load for nothing, seconds each
    from tool.common.runfolder import acquire_lock, release_lock, remove_stale_temps

    out_dir.mkdir(parents=True, exist_ok=True)
    lock = acquire_lock(out_dir)
    try:
        remove_stale_temps(out_dir)  # a killed run's half-written files
        if overwrite:
            _remove_previous(out_dir, names)
        write_provenance(out_dir, {KIND: settings}, {"n_listed": len(names)})
        jobs = [LabelJob(n, image_path(voc12_root, n), cam_dir / f"{n}.npy",
                         out_dir / f"{n}.png", float(conf_fg), float(conf_bg), bool(crf), params,
                         int(num_classes))
                for n in todo]
        done: dict[str, tuple[int, ...]] = {}
        failed: list[tuple[int, LabelResult]] = []
        for i, res in _results(jobs, int(workers), progress):
            if res.error is None:
                done[res.name] = res.keys
            else:
                failed.append((i, res))
    finally:
        release_lock(lock)
    if cls_labels is not None:
        warn_absent_classes(done, cls_labels)
    if failed:
        _raise_failures(sorted(failed, key=lambda f: f[0]), len(jobs))
    return len(done)


def _raise_failures(failed: list[tuple[int, LabelResult]], n_jobs: int) -> None:
    """One line: the first failure in list order, and how many failed; a bug's traceback
    follows its line."""
    first = failed[0][1]
    head = first.error if len(failed) == 1 else \
        f"{len(failed)} of {n_jobs} images failed (the others are written); the first: " \
        f"{first.error}"
    if first.trace is not None:
        raise RuntimeError(f"{head}\n{first.trace}")
    raise UserError(head)


def _crf_params(args: Any) -> IRCRFParams:
    return IRCRFParams(
        n_iters=args.ir_crf_iters, gt_prob=args.ir_crf_gt_prob, gauss_sxy=args.ir_crf_gauss_sxy,
        gauss_compat=args.ir_crf_gauss_compat, bi_sxy=args.ir_crf_bi_sxy,
        bi_srgb=args.ir_crf_bi_srgb, bi_compat=args.ir_crf_bi_compat)


def check_inputs(args: Any) -> list[str]:
    """What :func:`make_from_args` would check before any compute, without computing: raises
    the inputs' problems in one PreflightError, else returns the names still to do (the
    training preflight calls it before the run folder is claimed)."""
    from data.voc import load_img_name_list

    settings = label_settings(Path(args.voc12_root), Path(args.cam_dir), args.conf_fg_thres,
                              args.conf_bg_thres, args.ir_crf, _crf_params(args))
    return _preflight(load_img_name_list(args.train_list), Path(args.voc12_root),
                      Path(args.cam_dir), Path(args.ir_label_out_dir), settings,
                      bool(getattr(args, "overwrite_labels", False)))


def make_from_args(args: Any) -> int:
    """The IR labels of ``args.train_list`` from a resolved config (its ``irn`` section,
    ``voc12_root``, ``cls_labels``; ``args.overwrite_labels`` if set), logging through the
    caller's handlers. Returns how many PNGs were written."""
    from data.voc import load_cls_labels, load_img_name_list

    cls_labels = None
    if Path(args.cls_labels).is_file():
        cls_labels = load_cls_labels(args.cls_labels)
    else:
        log.info("no %s: the CAM classes are not compared with the image-level labels",
                 args.cls_labels)
    n = make_ir_labels(load_img_name_list(args.train_list), args.voc12_root, args.cam_dir,
                       args.ir_label_out_dir, args.conf_fg_thres, args.conf_bg_thres,
                       crf=args.ir_crf, crf_params=_crf_params(args),
                       workers=args.ir_label_workers, cls_labels=cls_labels,
                       overwrite=bool(getattr(args, "overwrite_labels", False)),
                       num_classes=args.num_classes)
    log.info("IR labels: %d written to %s", n, args.ir_label_out_dir)
    return n


def run(args: Any) -> int:
    """``make_ir_labels.py``: :func:`make_from_args` after the preset (``args.irn_preset``)
    and ``--overwrite`` (``args.overwrite``). Returns how many PNGs were written."""
    from tool.common.logs import setup_logging
    from tool.irn.presets import apply_preset

    setup_logging()
    preset = getattr(args, "irn_preset", None)
    if apply_preset(args, preset):
        log.info("preset %s: conf_fg_thres %.2f, conf_bg_thres %.2f", preset,
                 args.conf_fg_thres, args.conf_bg_thres)
    args.overwrite_labels = bool(getattr(args, "overwrite", False))
    return make_from_args(args)
