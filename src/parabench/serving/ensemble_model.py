"""The served seed ensemble as MLflow "models from code" (see paraphrase_model.py): MLflow records this file
with each logged version and runs it to load one; the members' weights folders are the version's artifacts."""

import mlflow

from parabench.serving.ensemble import EnsembleModel

mlflow.models.set_model(EnsembleModel())
