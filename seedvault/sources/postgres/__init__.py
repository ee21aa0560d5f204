"""PostgreSQL source: client/server binary discovery and a local cluster seedvault can start itself."""
