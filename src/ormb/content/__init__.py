"""Places that hold OCI content (Targets): the local cache, an OCI layout directory, memory."""
