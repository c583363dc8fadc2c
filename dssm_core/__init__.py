"""dssm_core: the engine of the audience explorer (no UI; never imports streamlit).

Layers: movielens/synthetic (data in) -> encoding/features (leak-free inputs) ->
model/losses/training (the two towers) -> metrics/pipeline (honest evaluation) ->
store (SQLite/PostgreSQL) -> audience/projection (what the analyst sees) -> jobs (background).
"""
from .dataset import DataValidationError, Dataset

__all__ = ["DataValidationError", "Dataset"]
__version__ = "0.1.0"
