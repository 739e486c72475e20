"""Lightning training template for CoAtNet: the classifier module, batch mixing and callbacks."""
