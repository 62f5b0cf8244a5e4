"""The served baseline as MLflow "models from code" (see paraphrase_model.py): MLflow records this file with
each logged version and runs it to load one; the encoder and the head (JSON) are the version's artifacts."""

import mlflow

from parabench.serving.baseline import BaselineModel

mlflow.models.set_model(BaselineModel())
