"""One module per compression method; each registers a MethodSpec on import."""
