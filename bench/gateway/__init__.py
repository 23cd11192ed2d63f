"""Gateway benchmark and the process harness its integration tests share."""
