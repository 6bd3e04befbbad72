"""Pure OCI data: media types, digests, descriptors, manifests and references."""
