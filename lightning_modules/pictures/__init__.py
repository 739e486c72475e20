"""Pictures of a run (input batches, predictions, confusion matrix, attention) drawn without matplotlib."""
