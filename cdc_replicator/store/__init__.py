"""The operational state store (SQLAlchemy): slot and load records, table status, schema history."""
