"""Stage-3 inference over an image list (METHOD.md 14.6); numerics live in tool.seg.msf."""
from tool.seg.msf import (
    CRF_PARAMS,
    crf_refine,
    msf_fuse,
    msf_predict,
    predict_label,
    scaled_inputs,
)

__all__ = ["CRF_PARAMS", "crf_refine", "msf_fuse", "msf_predict", "predict_label",
           "scaled_inputs"]
