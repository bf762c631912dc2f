"""What was bought: the label store, the oracle that reveals ground truth, and the human-annotation loop
with its file formats."""
