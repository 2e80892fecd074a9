"""DeMoSeg: decoupled self- and mutual-features per sequence, CSSA and RCR compensation on the planned U-Net."""
