"""The ablation registry: ablations/*.toml (tables, cells, claims, profiles) read into typed objects."""
