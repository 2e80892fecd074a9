"""Lesion-wise (BraTS 2023 GLI) vs whole-volume scoring of one 240x240x155 case, 3 regions (WT/TC/ET): seconds
each, mean of 2 runs. Run: PYTHONPATH=. python benchmarks/bench_lesionwise.py"""
import time, numpy as np
from scipy import ndimage
from nnunet_missingmod.evaluation.metrics import dice, hd95
from nnunet_missingmod.evaluation.lesionwise import lesionwise_scores
z,y,x=np.ogrid[:155,:240,:240]
r=np.sqrt((z-77)**2+(y-120)**2+(x-110)**2)
gt=np.where(r<30,2,0); gt[r<15]=1; gt[r<8]=3
pr=np.roll(gt,2,axis=2); pr[20:24,30:34,30:34]=2
regions={"WT":(1,2,3),"TC":(1,3),"ET":(3,)}
def whole():
    for v in regions.values():
        a,b=np.isin(pr,v),np.isin(gt,v); dice(a,b); hd95(a,b)
def lesion():
    for v in regions.values():
        a,b=np.isin(pr,v),np.isin(gt,v); lesionwise_scores(a,b)
for f in (whole,lesion):
    t=time.perf_counter(); f(); f(); print(f.__name__, (time.perf_counter()-t)/2)
