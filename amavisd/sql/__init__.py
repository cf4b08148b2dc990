"""SQL: the amavis tables on PostgreSQL (psycopg 3): logging, quarantine store, lookups."""
