"""The paper's experiments as functions: compare (Table 2), ablate (Table 3), sweep (Figures 6 and 7),
segments (Figures 2 and 5) and throughput (Table 4).

They share one folder layout (``store``), so a run trained for one experiment is reused by the others
and an interrupted experiment resumes where it stopped.
"""
from t2arec.experiments.ablate import ablate
from t2arec.experiments.compare import compare
from t2arec.experiments.segments import segments
from t2arec.experiments.store import ExperimentError, Setup
from t2arec.experiments.sweep import sweep
from t2arec.experiments.throughput import throughput

__all__ = ["Setup", "ExperimentError", "compare", "ablate", "sweep", "segments", "throughput"]
