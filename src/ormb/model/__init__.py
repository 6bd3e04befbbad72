"""Models: the ormbfile.yaml schema, format validation, packing and unpacking."""
