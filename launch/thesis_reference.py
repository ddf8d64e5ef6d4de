"""The numbers the thesis reports, as printed (Joakimsen 2021, "ConvMixerSeg: Weakly Supervised
Semantic Segmentation for CT Liver Images", UiT, chapter 8 and appendix 10.1).

Every cell is ``mean ± std (median)`` over independently trained models, on the thesis' LiTS
subset (131 volumes split 0.6 / 0.2 / 0.2 by volume, 10 liver + 10 background slices per volume,
512×512). Cells are copied digit for digit (the thesis drops trailing zeros, e.g. ``0.27``).
Metrics the thesis does not report (Dice everywhere; Cls-* for the fully supervised models) are
absent. ``docs/reproduction.md`` holds the same numbers as tables.
"""

SPLITS = ("train", "val", "test")

# experiment -> title, thesis tables, seed count as the thesis states it, metric -> cells per split.
EXPERIMENTS = {
    "full_ce": {
        "title": "ConvMixerSeg, weighted CE, 25 epochs",
        "tables": "8.1 / 10.1",
        "seeds": "52",
        "cells": {
            "acc": ("0.981 ± 0.098 (0.995)", "0.897 ± 0.223 (0.975)", "0.893 ± 0.233 (0.983)"),
            "mcc": ("0.906 ± 0.126 (0.927)", "0.669 ± 0.251 (0.756)", "0.682 ± 0.27 (0.782)"),
            "iou": ("0.842 ± 0.118 (0.864)", "0.537 ± 0.236 (0.593)", "0.562 ± 0.255 (0.644)"),
            "precision": ("0.845 ± 0.118 (0.867)", "0.556 ± 0.247 (0.61)", "0.582 ± 0.266 (0.694)"),
            "recall": ("0.992 ± 0.03 (0.996)", "0.939 ± 0.043 (0.953)", "0.94 ± 0.049 (0.959)"),
        },
    },
    "fcn_resnet50": {
        "title": "FCN-ResNet-50, weighted CE, 25 epochs",
        "tables": "8.2 / 10.2",
        "seeds": "49",
        "cells": {
            "acc": ("0.962 ± 0.01 (0.96)", "0.936 ± 0.129 (0.964)", "0.939 ± 0.129 (0.965)"),
            "mcc": ("0.656 ± 0.072 (0.649)", "0.637 ± 0.147 (0.677)", "0.655 ± 0.146 (0.686)"),
            "iou": ("0.464 ± 0.094 (0.45)", "0.459 ± 0.149 (0.49)", "0.48 ± 0.152 (0.504)"),
            "precision": (
                "0.472 ± 0.094 (0.458)",
                "0.492 ± 0.173 (0.504)",
                "0.508 ± 0.174 (0.515)",
            ),
            "recall": ("0.96 ± 0.013 (0.959)", "0.923 ± 0.123 (0.962)", "0.934 ± 0.098 (0.966)"),
        },
    },
    "cam_beta": {
        "title": "ConvMixerSeg-CAM_β (ablation baseline), 3 epochs",
        "tables": "8.3, 8.4 / 10.5, 10.6",
        "seeds": "not stated (at least 25, §7.6)",
        "cells": {
            "acc": ("0.971 ± 0.004 (0.972)", "0.932 ± 0.13 (0.967)", "0.93 ± 0.143 (0.968)"),
            "mcc": ("0.375 ± 0.169 (0.409)", "0.279 ± 0.222 (0.365)", "0.301 ± 0.234 (0.396)"),
            "iou": ("0.212 ± 0.105 (0.218)", "0.161 ± 0.136 (0.171)", "0.178 ± 0.148 (0.203)"),
            "precision": ("0.684 ± 0.238 (0.747)", "0.561 ± 0.355 (0.719)", "0.59 ± 0.352 (0.765)"),
            "recall": ("0.23 ± 0.114 (0.24)", "0.213 ± 0.184 (0.209)", "0.239 ± 0.202 (0.223)"),
            "cls_acc": ("0.913 ± 0.039 (0.92)", "0.885 ± 0.08 (0.93)", "0.888 ± 0.084 (0.936)"),
            "cls_mcc": ("0.795 ± 0.06 (0.805)", "0.7 ± 0.271 (0.828)", "0.707 ± 0.279 (0.842)"),
            "cls_iou": ("0.887 ± 0.052 (0.896)", "0.858 ± 0.094 (0.908)", "0.861 ± 0.099 (0.915)"),
            "cls_precision": (
                "0.975 ± 0.013 (0.976)",
                "0.954 ± 0.078 (0.983)",
                "0.957 ± 0.079 (0.988)",
            ),
            "cls_recall": ("0.909 ± 0.056 (0.921)", "0.902 ± 0.1 (0.936)", "0.903 ± 0.103 (0.936)"),
        },
    },
    "cam_alpha": {
        "title": "ConvMixerSeg-CAM_α, 10 epochs",
        "tables": "8.5, 8.6 / 10.3, 10.4",
        "seeds": "not stated (at least 25, §7.6)",
        "cells": {
            "acc": ("0.32 ± 0.079 (0.308)", "0.394 ± 0.145 (0.363)", "0.406 ± 0.147 (0.378)"),
            "mcc": ("0.132 ± 0.109 (0.122)", "0.119 ± 0.119 (0.132)", "0.107 ± 0.126 (0.101)"),
            "iou": ("0.017 ± 0.013 (0.017)", "0.018 ± 0.017 (0.015)", "0.02 ± 0.018 (0.018)"),
            "precision": (
                "0.018 ± 0.013 (0.018)",
                "0.019 ± 0.017 (0.016)",
                "0.022 ± 0.018 (0.021)",
            ),
            "recall": ("0.345 ± 0.241 (0.331)", "0.3 ± 0.274 (0.272)", "0.32 ± 0.281 (0.319)"),
            "cls_acc": ("0.732 ± 0.025 (0.742)", "0.739 ± 0.026 (0.75)", "0.74 ± 0.022 (0.75)"),
            "cls_mcc": ("0.557 ± 0.027 (0.568)", "0.565 ± 0.027 (0.577)", "0.566 ± 0.024 (0.577)"),
            "cls_iou": ("0.643 ± 0.033 (0.656)", "0.652 ± 0.034 (0.667)", "0.653 ± 0.03 (0.667)"),
            "cls_precision": ("1.0 ± 0.0 (1.0)", "1.0 ± 0.0 (1.0)", "1.0 ± 0.0 (1.0)"),
            "cls_recall": (
                "0.643 ± 0.033 (0.656)",
                "0.652 ± 0.034 (0.667)",
                "0.653 ± 0.03 (0.667)",
            ),
        },
    },
    "ablation_no_gs": {
        "title": "Baseline-GS (no Gaussian smoothing), 3 epochs",
        "tables": "10.9, 10.10",
        "seeds": "not stated (at least 40, §7.2)",
        "cells": {
            "acc": ("0.942 ± 0.024 (0.946)", "0.93 ± 0.073 (0.962)", "0.93 ± 0.076 (0.961)"),
            "mcc": ("0.128 ± 0.129 (0.079)", "0.154 ± 0.175 (0.067)", "0.164 ± 0.179 (0.091)"),
            "iou": ("0.072 ± 0.079 (0.034)", "0.082 ± 0.106 (0.029)", "0.086 ± 0.11 (0.03)"),
            "precision": (
                "0.291 ± 0.272 (0.202)",
                "0.411 ± 0.325 (0.341)",
                "0.435 ± 0.335 (0.396)",
            ),
            "recall": ("0.168 ± 0.215 (0.043)", "0.19 ± 0.275 (0.053)", "0.195 ± 0.279 (0.057)"),
            "cls_acc": ("0.815 ± 0.061 (0.808)", "0.836 ± 0.078 (0.862)", "0.838 ± 0.08 (0.871)"),
            "cls_mcc": ("0.4 ± 0.288 (0.41)", "0.459 ± 0.368 (0.638)", "0.466 ± 0.37 (0.682)"),
            "cls_iou": ("0.798 ± 0.052 (0.769)", "0.818 ± 0.074 (0.824)", "0.819 ± 0.076 (0.831)"),
            "cls_precision": (
                "0.844 ± 0.091 (0.809)",
                "0.874 ± 0.106 (0.899)",
                "0.876 ± 0.105 (0.91)",
            ),
            "cls_recall": (
                "0.948 ± 0.061 (0.974)",
                "0.941 ± 0.083 (0.976)",
                "0.942 ± 0.085 (0.979)",
            ),
        },
    },
    "ablation_no_gs_bilinear": {
        "title": "Baseline-GS+BlnrUp (no smoothing, bilinear upsampling), 3 epochs",
        "tables": "10.11, 10.12",
        "seeds": "not stated (at least 40, §7.2)",
        "cells": {
            "acc": ("0.966 ± 0.006 (0.965)", "0.949 ± 0.046 (0.959)", "0.95 ± 0.048 (0.96)"),
            "mcc": ("0.251 ± 0.2 (0.266)", "0.192 ± 0.244 (0.06)", "0.202 ± 0.243 (0.073)"),
            "iou": ("0.154 ± 0.137 (0.158)", "0.127 ± 0.171 (0.03)", "0.133 ± 0.169 (0.044)"),
            "precision": ("0.391 ± 0.238 (0.401)", "0.286 ± 0.305 (0.132)", "0.308 ± 0.3 (0.217)"),
            "recall": ("0.196 ± 0.179 (0.199)", "0.195 ± 0.267 (0.07)", "0.203 ± 0.263 (0.077)"),
            "cls_acc": ("0.892 ± 0.03 (0.901)", "0.873 ± 0.076 (0.911)", "0.878 ± 0.076 (0.913)"),
            "cls_mcc": ("0.719 ± 0.084 (0.735)", "0.651 ± 0.275 (0.779)", "0.66 ± 0.278 (0.793)"),
            "cls_iou": ("0.865 ± 0.035 (0.877)", "0.848 ± 0.084 (0.884)", "0.853 ± 0.084 (0.887)"),
            "cls_precision": (
                "0.937 ± 0.04 (0.953)",
                "0.929 ± 0.086 (0.969)",
                "0.93 ± 0.084 (0.96)",
            ),
            "cls_recall": (
                "0.921 ± 0.043 (0.929)",
                "0.916 ± 0.093 (0.942)",
                "0.921 ± 0.09 (0.942)",
            ),
        },
    },
    "ablation_no_res": {
        "title": "Baseline-Res (no pointwise residual), 3 epochs",
        "tables": "10.7, 10.8",
        "seeds": "not stated (at least 40, §7.2)",
        "cells": {
            "acc": ("0.663 ± 0.243 (0.731)", "0.705 ± 0.261 (0.79)", "0.708 ± 0.258 (0.788)"),
            "mcc": ("0.051 ± 0.126 (0.027)", "0.094 ± 0.183 (0.049)", "0.094 ± 0.175 (0.038)"),
            "iou": ("0.054 ± 0.067 (0.037)", "0.071 ± 0.109 (0.042)", "0.072 ± 0.106 (0.041)"),
            "precision": ("0.109 ± 0.177 (0.04)", "0.133 ± 0.202 (0.051)", "0.131 ± 0.202 (0.051)"),
            "recall": ("0.389 ± 0.269 (0.376)", "0.398 ± 0.348 (0.418)", "0.403 ± 0.349 (0.345)"),
            "cls_acc": ("0.774 ± 0.048 (0.751)", "0.788 ± 0.07 (0.75)", "0.787 ± 0.07 (0.75)"),
            "cls_mcc": ("0.238 ± 0.26 (0.14)", "0.253 ± 0.344 (0.0)", "0.249 ± 0.343 (0.0)"),
            "cls_iou": ("0.757 ± 0.048 (0.751)", "0.773 ± 0.072 (0.75)", "0.772 ± 0.072 (0.75)"),
            "cls_precision": (
                "0.812 ± 0.082 (0.764)",
                "0.825 ± 0.106 (0.75)",
                "0.824 ± 0.105 (0.75)",
            ),
            "cls_recall": ("0.934 ± 0.092 (0.976)", "0.945 ± 0.107 (1.0)", "0.947 ± 0.106 (1.0)"),
        },
    },
    "ablation_no_aug": {
        "title": "Baseline-Aug (no gamma augmentation), 3 epochs",
        "tables": "10.13, 10.14",
        "seeds": "not stated (at least 40, §7.2)",
        "cells": {
            "acc": ("0.963 ± 0.039 (0.969)", "0.961 ± 0.024 (0.964)", "0.962 ± 0.027 (0.966)"),
            "mcc": ("0.322 ± 0.178 (0.365)", "0.252 ± 0.186 (0.212)", "0.259 ± 0.183 (0.254)"),
            "iou": ("0.188 ± 0.116 (0.197)", "0.135 ± 0.124 (0.085)", "0.139 ± 0.119 (0.116)"),
            "precision": ("0.555 ± 0.224 (0.621)", "0.509 ± 0.27 (0.535)", "0.548 ± 0.269 (0.61)"),
            "recall": ("0.215 ± 0.132 (0.234)", "0.156 ± 0.144 (0.118)", "0.158 ± 0.135 (0.139)"),
            "cls_acc": ("0.913 ± 0.056 (0.935)", "0.898 ± 0.072 (0.932)", "0.9 ± 0.072 (0.931)"),
            "cls_mcc": ("0.795 ± 0.123 (0.834)", "0.748 ± 0.226 (0.835)", "0.751 ± 0.226 (0.835)"),
            "cls_iou": ("0.888 ± 0.07 (0.915)", "0.871 ± 0.086 (0.911)", "0.873 ± 0.086 (0.909)"),
            "cls_precision": (
                "0.974 ± 0.032 (0.977)",
                "0.97 ± 0.062 (0.99)",
                "0.97 ± 0.063 (0.99)",
            ),
            "cls_recall": ("0.911 ± 0.071 (0.936)", "0.9 ± 0.09 (0.923)", "0.902 ± 0.089 (0.933)"),
        },
    },
}

# comparison -> title, thesis section, runs (the first is the baseline), the thesis' statement per
# (alternative, metric) on the test split, and what the thesis concludes.
COMPARISONS = {
    "convmixerseg_vs_fcn": {
        "title": "Full supervision: ConvMixerSeg vs FCN-ResNet-50",
        "section": "§8.1.3",
        "runs": ("full_ce", "fcn_resnet50"),
        "tests": {
            ("fcn_resnet50", "mcc"): "Mood p ≈ 0.006, ConvMixerSeg higher median",
            (
                "fcn_resnet50",
                "iou",
            ): "Mood p ≈ 0.006 (identical to MCC), ConvMixerSeg higher median",
        },
        "conclusion": "ConvMixerSeg outperforms FCN-ResNet-50 in the median (test MCC and IoU).",
    },
    "cam_beta_vs_cam_alpha": {
        "title": "Weak supervision: CAM_β vs CAM_α",
        "section": "§8.2.3",
        "runs": ("cam_beta", "cam_alpha"),
        "tests": {
            ("cam_alpha", "cls_mcc"): "Mood p ≈ 1.3e-08, CAM_β higher median",
            ("cam_alpha", "mcc"): "Mood p ≈ 3.6e-05, CAM_β higher median",
        },
        "conclusion": "CAM_β outperforms CAM_α for classification and segmentation.",
    },
    "ablations": {
        "title": "Ablation study: CAM_β baseline vs each alternative (table 8.7)",
        "section": "§8.3",
        "runs": (
            "cam_beta",
            "ablation_no_gs",
            "ablation_no_gs_bilinear",
            "ablation_no_res",
            "ablation_no_aug",
        ),
        "tests": {
            ("ablation_no_gs", "cls_mcc"): "Mood p = 0.002 (*)",
            ("ablation_no_gs", "mcc"): "Mood p = 0.01 (*)",
            ("ablation_no_gs", "recall"): "Mood p = 0.0002, baseline higher median",
            ("ablation_no_gs", "precision"): "Mood p = 0.12; t-test p = 0.45 (both pass AD)",
            ("ablation_no_gs_bilinear", "cls_mcc"): "Mood p = 0.03 (*)",
            ("ablation_no_gs_bilinear", "mcc"): "Mood p = 0.03 (*)",
            ("ablation_no_gs_bilinear", "precision"): "Mood p = 0.002",
            ("ablation_no_gs_bilinear", "recall"): "Mood p = 0.0002",
            ("ablation_no_res", "cls_mcc"): "Mood p = 2.3e-07 (*)",
            ("ablation_no_res", "mcc"): "Mood p = 5.6e-04 (*)",
            ("ablation_no_aug", "cls_mcc"): "Mood p = 0.67",
            ("ablation_no_aug", "mcc"): "Mood p = 0.39; t-test p = 0.026 (every group passes AD)",
        },
        "conclusion": "The baseline's median is higher in every comparison; every component "
        "contributes significantly (augmentation by the t-test only).",
    },
    "full_vs_weak": {
        "title": "Full vs weak supervision: ConvMixerSeg (CE) vs ConvMixerSeg-CAM_β",
        "section": "§8.4",
        "runs": ("full_ce", "cam_beta"),
        "tests": {
            ("cam_beta", "mcc"): "median difference 0.481 as printed (0.782 − 0.301; "
            "0.301 is CAM_β's mean, its median is 0.396)",
            ("cam_beta", "iou"): "median difference 0.644 − 0.203 = 0.441",
            ("cam_beta", "precision"): "Mood p = 4.8e-15; t-test p = 0.045, CAM_β higher mean "
            "(both pass AD)",
        },
        "conclusion": "Full supervision is much better on every metric except precision, where "
        "the weakly supervised mean is significantly higher.",
    },
}
