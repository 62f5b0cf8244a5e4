"""The served model as MLflow "models from code": MLflow records this file with each logged version and runs
it to load one, so loading imports parabench's code (logged beside it, `code_paths`) instead of unpickling
an object. The model's settings and request limits come from its `model_config` (see pyfunc.py)."""

import mlflow

from parabench.serving.pyfunc import ParaphraseModel

mlflow.models.set_model(ParaphraseModel())
