"""Operations: one module per operation, one entry function each, shared by the CLI and the Prefect tasks."""
