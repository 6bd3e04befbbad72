"""From registry to model server: the storage initializer and layouts for model servers."""
