"""What a person looks at: MLflow runs (with a durable outbox), the sweep report, the dashboard, TensorBoard."""
