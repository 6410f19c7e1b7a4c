"""The study file: one self-describing HDF5 file per study (see ``store.schema``).

Imports nothing else of the project: ``cache`` writes through it, ``explorer`` and the apps
read through it.
"""

from store.analysis import AnalysisStage, read_stage, stage_names, write_stage
from store.errors import InputError, StudyFileError
from store.schema import SCHEMA_VERSION
from store.study import LayerCodes, PromptRecord, Study, StudyMeta
from store.writer import PromptBatch, StudySpec, StudyWriter

__all__ = [
    "SCHEMA_VERSION", "AnalysisStage", "InputError", "LayerCodes", "PromptBatch", "PromptRecord",
    "Study", "StudyFileError", "StudyMeta", "StudySpec", "StudyWriter", "read_stage", "stage_names",
    "write_stage",
]
