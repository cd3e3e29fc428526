"""Training and evaluating models on the IDC patches (no Qt): dataset and patient split,
training, metrics, evaluation reports."""
