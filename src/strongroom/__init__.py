"""strongroom: encrypted, triple-redundant backup and recovery for multi-tenant PostgreSQL."""

__version__ = "0.1.0"
