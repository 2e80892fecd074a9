"""MST-KDNet (Li et al.): teacher/student network and its distillation losses."""
