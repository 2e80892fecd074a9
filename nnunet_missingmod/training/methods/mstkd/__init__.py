"""MST-KDNet (Zhu et al., MICCAI 2025): teacher/student network and its distillation losses."""
