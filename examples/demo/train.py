"""Train a small regression model on scikit-learn's bundled diabetes data set."""

from __future__ import annotations

import sys
from pathlib import Path

import joblib
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Ridge
from sklearn.model_selection import train_test_split


def train(out_dir: Path) -> Path:
    features, target = load_diabetes(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(features, target, test_size=0.2, random_state=0)
    model = Ridge(alpha=0.1).fit(x_train, y_train)
    print(f"trained Ridge regression: R^2 on held-out data = {model.score(x_test, y_test):.3f}")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.pkl"
    joblib.dump(model, path)
    return path


if __name__ == "__main__":
    print(train(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs")))
