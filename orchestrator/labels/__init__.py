"""What was bought: the label store, the oracle that reveals ground truth, and the human-annotation loop
with its file formats."""

# The annotation tools a round exports to and imports from (orchestrator.labels.formats); here, so that
# the command line lists them without importing numpy, torch or the store.
FORMATS = ("labelstudio", "coco", "png")
